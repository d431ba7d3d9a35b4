"""The shipped CPU-scale reproductions (results/cpu, results/cpu_adam, results/v2) and the code
agree.

Reruns the analysis on the committed Parquet files and compares it with the committed
collapse.json: same cells, verdicts and statistics. Doubles as the analysis's regression
test on real data.
"""
import dataclasses
import json
from pathlib import Path

import pytest

from analysis.collapse import CheckSettings, run_checks
from analysis.export import to_json
from analysis.load import load_results
from analysis.rules import VERSIONS

RESULTS = Path(__file__).resolve().parents[2] / "results"
# name: (trials, history rows, has the per-cell table of issue 11)
SHIPPED = {"cpu": (176, 704, False), "cpu_adam": (40, 160, False), "v2": (336, 1334, True),
           "v3": (486, 3331, True), "v3b": (63, 441, True), "v3c": (27, 756, True),
           "v3d": (27, 756, True), "v3e": (27, 756, True), "v3f": (27, 189, True)}
# v3: 27 diverged trials stop at their diverged epoch
RULES = {"cpu": "2", "cpu_adam": "2", "v2": "2", "v3": "3", "v3b": "3", "v3c": "3",
         "v3d": "4", "v3e": "4", "v3f": "4"}  # as run
STATS = ("s", "ci_low", "ci_high", "r2adj_1d", "r2adj_lr", "r2adj_l2", "lof_p", "ratio", "l2_effect",
         "l2_p", "lr_p", "balance_median", "ratio_median", "best_error", "best_lr", "best_l2",
         "conv1_dead_median", "conv2_dead_median", "conv3_dead_median", "conv3_dead_used_median",
         "iso_slope", "iso_slope_se", "iso_along_p", "iso_across_p")  # iso_*: rules "3" only


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def committed_and_fresh(request):
    folder = RESULTS / request.param
    committed = json.loads((folder / "collapse.json").read_text())
    known = {f.name for f in dataclasses.fields(CheckSettings)}
    # each folder is judged under the rules version it records (results/v2: "2")
    settings = CheckSettings(**{k: v for k, v in committed["settings"].items() if k in known}
                             | {"rules": committed["rules_version"]})
    results = load_results(str(folder))
    fresh = json.loads(to_json(run_checks(results, settings), results))
    assert committed["rules_version"] == RULES[request.param]
    return committed, fresh, results, SHIPPED[request.param]


def test_shipped_sweep_is_complete(committed_and_fresh):
    _, _, results, (n_trials, n_rows, _) = committed_and_fresh
    assert len(results.trials) == n_trials and results.skipped == []
    assert set(results.trials["status"]) <= {"completed", "diverged"}
    assert len(results.history) == n_rows  # a trial that diverged early has fewer rows
    assert not results.history.duplicated(["trial_id", "epoch"]).any()


def test_analysis_reproduces_committed_verdicts(committed_and_fresh):
    committed, fresh, _, _ = committed_and_fresh
    key = ("check", "cell", "role", "expected", "verdict")
    assert [tuple(v[k] for k in key) for v in fresh["verdicts"]] == \
        [tuple(v[k] for k in key) for v in committed["verdicts"]]
    assert fresh["inputs"] == committed["inputs"]


def test_committed_under_the_rules_it_records(committed_and_fresh):
    committed, fresh, _, _ = committed_and_fresh
    assert committed["rules_version"] == fresh["rules_version"] in VERSIONS
    assert committed["thresholds"] == fresh["thresholds"]


@pytest.mark.parametrize("table", ["collapse", "projection", "equilibrium", "sensitivity",
                                   "cells", "collapse_train"])
def test_analysis_reproduces_committed_statistics(committed_and_fresh, table):
    committed, fresh, _, (_, _, has_cells) = committed_and_fresh
    if table == "cells" and not has_cells:  # written before the per-cell table existed
        assert "cells" not in committed
        return
    if table == "collapse_train" and committed["rules_version"] == "2":  # a rules-"3" table
        assert table not in committed and table not in fresh
        return
    assert [r["cell"] for r in fresh[table]] == [r["cell"] for r in committed[table]]
    assert [r.get("verdict") for r in fresh[table]] == [r.get("verdict") for r in committed[table]]
    for new, old in zip(fresh[table], committed[table], strict=True):
        for stat in STATS:
            if old.get(stat) is None:
                assert new.get(stat) is None, (new["cell"], stat)
            else:
                assert new[stat] == pytest.approx(old[stat], rel=1e-9, abs=1e-12), (new["cell"], stat)


def test_v3d_is_decided_by_the_forecast_fallback():
    """results/v3d: INSUFFICIENT under rules 3 (1 of 9 points passes the measured equilibrium
    test), decided under rules 4 on its 9 forecast-ready points."""
    results = load_results(str(RESULTS / "v3d"))
    v3 = run_checks(results, CheckSettings(rules="3"), False).collapse.iloc[0]
    v4 = run_checks(results, CheckSettings(rules="4"), False).collapse.iloc[0]
    assert (v3["verdict"], v3["n_points"]) == ("INSUFFICIENT", 1)
    assert (v4["verdict"], v4["n_points"], v4["basis"]) == ("FAIL", 9, "forecast")

"""Rules version 4 (analysis/rules.py): the forecast fallback, on synthetic sweeps whose
angle does not settle (the last epoch's measured angle jumps), with known answers."""
import math

import pandas as pd
import pytest
from test_rules_v3 import SGD_LRS, SGD_PRODUCTS, cell, diagonals, rising

from analysis import rules as R
from analysis.collapse import CheckSettings, run_checks, verdict_table
from analysis.load import load_results
from analysis.synthetic import SyntheticSweep, write_sweep


def unsettled(tmp_path, error, jump=2.0, **sweep):
    """Results of an sgd + batch-norm iso-line sweep whose conv1 angle jumps by `jump` in the
    last epoch of every trial (angle drift ln 2 = 0.69 > ANGLE_DRIFT_MAX), so no point
    passes the measured equilibrium test."""
    sweep.setdefault("steps_per_epoch", 20_000)
    write_sweep(tmp_path, SyntheticSweep(error, points=diagonals(SGD_LRS, SGD_PRODUCTS), **sweep))
    jump_last_angle(tmp_path, jump)
    return load_results(str(tmp_path))


def jump_last_angle(folder, jump, where=lambda rows: True):
    """Multiply conv1's angle in the last epoch of the trials `where` selects by `jump`, on
    disk (for analysis.rule_changes): in history and in the summary row (the last epoch's)."""
    for kind in ("history", "trials"):
        for path in (folder / kind).glob("*.parquet"):
            t = pd.read_parquet(path)
            t.loc[(t["epoch"] == t["epoch"].max()) & where(t), "conv1_angular_update"] *= jump
            t.to_parquet(path, index=False)


def judged(results, rules, sensitivity=False):
    return run_checks(results, CheckSettings(n_boot=100, rules=rules), sensitivity)


def test_unsettled_cell_is_judged_on_its_forecast_points(tmp_path):
    results = unsettled(tmp_path, rising)
    v3, v4 = judged(results, "3"), judged(results, "4")
    assert not v3.points["equilibrated"].any()
    assert cell(v3.collapse)["verdict"] == "INSUFFICIENT"
    assert cell(v3.equilibrium_cells)["verdict"] == "INSUFFICIENT"
    row = cell(v4.collapse)
    assert row["basis"] == "forecast" and row["n_points"] == 12
    assert row["verdict"] == "PASS", row["reason"]
    assert row["reason"].startswith("forecast basis")
    assert cell(v4.collapse_train)["verdict"] == "PASS"
    assert row["iso_verdict"] == "PASS" and row["iso_reason"].startswith("forecast basis")
    eq = cell(v4.equilibrium_cells)
    assert eq["basis"] == "forecast" and eq["n_points"] == 12
    # balance (ratio^2 for sgd) over conv layers: (2^2 + 1 + 1) / 3 = 2, outside [2/3, 3/2]
    assert eq["balance_median"] == pytest.approx(2.0) and eq["verdict"] == "FAIL"


def test_unsettled_cell_with_an_lr_effect_fails(tmp_path):
    lr_only = lambda o, n, u, lr, l2: 0.3 + 0.1 * math.log2(lr / 0.025)  # noqa: E731
    row = cell(judged(unsettled(tmp_path, lr_only), "4").collapse)
    assert row["basis"] == "forecast" and row["verdict"] == "FAIL"
    assert row["iso_verdict"] == "FAIL"


def test_fallback_needs_forecast_time(tmp_path):
    # 2 steps per epoch x 3 epochs: far below 3 relaxation times at these lr*l2
    results = unsettled(tmp_path, rising, steps_per_epoch=2)
    row = cell(judged(results, "4").collapse)
    assert row["basis"] == "measured" and row["verdict"] == "INSUFFICIENT"
    assert row["n_points"] == 0


def test_settled_cell_is_untouched(tmp_path):
    results = unsettled(tmp_path, rising, jump=1.0)
    v3, v4 = judged(results, "3"), judged(results, "4")
    assert v3.points["equilibrated"].all()
    assert (v4.points["basis"] == "measured").all()
    assert verdict_table(v3).equals(verdict_table(v4))
    for name in ("collapse", "collapse_train", "equilibrium_cells", "points"):
        a, b = getattr(v3, name), getattr(v4, name).drop(columns="basis")
        pd.testing.assert_frame_equal(a, b[a.columns])


def test_each_cell_is_judged_on_its_own_basis(tmp_path):
    """sgd + batch norm settles (every point), adam + batch norm does not (its angles jump):
    only adam's cell falls back; a cell with 3-5 measured points (too few) falls back too."""
    write_sweep(tmp_path, SyntheticSweep(rising, optimizers=("sgd", "adam"), steps_per_epoch=20_000,
                                         points=diagonals(SGD_LRS, SGD_PRODUCTS)))
    # adam: every point unsettled; sgd: only its largest lr (3 of 12 points)
    jump_last_angle(tmp_path, 2.0, lambda t: (t["optimizer"] == "adam") | (t["lr"] == max(SGD_LRS)))
    checks = judged(load_results(str(tmp_path)), "4", sensitivity=True)
    sgd, adam = cell(checks.collapse, "sgd/batch/l2"), cell(checks.collapse, "adam/batch/l2")
    assert (sgd["basis"], sgd["n_points"]) == ("measured", 9)
    assert (adam["basis"], adam["n_points"]) == ("forecast", 12)
    sens = checks.sensitivity.set_index(["cell", "rule", "factor"])["used"]
    assert sens[("adam/batch/l2", "relaxation", 3.0)] and sens[("sgd/batch/l2", "measured", 1.0)]
    assert sens.sum() == 2  # one used rule per cell
    assert cell(checks.equilibrium_cells, "sgd/batch/l2")["basis"] == "measured"

    # sgd with only its 3 lr = 0.025 points settled (too few) falls back as well
    results = load_results(str(tmp_path))
    h = results.history
    last = h["epoch"] == h.groupby("trial_id")["epoch"].transform("max")
    h.loc[last & (h["optimizer"] == "sgd") & (h["lr"] > 0.025), "conv1_angular_update"] *= 2.0
    assert judged(results, "3").points.groupby("cell")["equilibrated"].sum().to_dict() == {
        "adam/batch/l2": 0, "sgd/batch/l2": 3}
    sgd = cell(judged(results, "4").collapse, "sgd/batch/l2")
    assert (sgd["basis"], sgd["n_points"]) == ("forecast", 12)


def test_fallback_off_for_exploration_rules(tmp_path):
    results = unsettled(tmp_path, rising)
    checks = run_checks(results, CheckSettings(n_boot=50, rules="4", equilibrium="all"), False)
    assert "basis" not in checks.points


def test_version_4_thresholds_and_texts():
    assert R.thresholds("4")["forecast_fallback"] is True
    assert "forecast_fallback" not in R.thresholds("3")
    assert R.RULES_VERSION == "4" and R.thresholds()["rules_version"] == "4"
    assert any(t.startswith("Forecast fallback") for t in R.version_rules("4"))
    assert not any(t.startswith("Forecast fallback") for t in R.version_rules("3"))


def test_rule_changes_from_3_to_4(tmp_path):
    from analysis.rule_changes import main, markdown, variants, verdicts

    assert [label for label, _ in variants("3", "4")] == ["3", "+ forecast_fallback=True"]
    unsettled(tmp_path, rising)
    table = verdicts(str(tmp_path), n_boot=50, old="3", new="4")
    text = markdown(table)
    assert "| collapse | sgd/batch/l2 | INSUFFICIENT | PASS |" in text
    assert "| collapse_train | sgd/batch/l2 | INSUFFICIENT | PASS |" in text
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--from", "4", "--to", "3"])

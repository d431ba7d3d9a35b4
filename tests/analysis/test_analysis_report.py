"""python -m analysis.report end to end on synthetic results: outputs, HTML content, partial
sweeps, errors, determinism."""
import base64
import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO

from analysis import protocol
from analysis.checks.inference import holm
from analysis.collapse import CheckSettings
from analysis.report import FIGURES, build_parser, choose_dynamics, main
from analysis.synthetic import SyntheticSweep, write_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def error(optimizer, norm, update, lr, l2):
    """Collapse with a normalization (lr*l2, or lr^2*l2 for adam); lr only with projection;
    an additive, non-collapsing surface without normalization."""
    if update == "projection":
        return 0.1 + 0.05 * (math.log10(lr) + 1.5) ** 2
    if norm == "none":
        return 0.15 + 0.04 * (math.log10(lr) + 1) ** 2 + 0.01 * math.log10(max(l2, 1e-5)) ** 2
    z = math.log10(max(lr, 1e-9) ** (2 if optimizer == "adam" else 1) * max(l2, 1e-6))
    return 0.1 + 0.05 * (z - (-5.0 if optimizer == "adam" else -3.5)) ** 2


GENERAL = [n for n in FIGURES if n != "fig9_regimes"]  # figure 9: regimes folders only (below)
SWEEP = SyntheticSweep(error, optimizers=("sgd", "adam"), norms=("batch", "none"),
                       updates=("l2", "projection"), lrs=(0.01, 0.03, 0.1, 0.3, 3.0),
                       l2s=(0.0, 1e-4, 3e-4, 1e-3, 3e-3), seeds=(0, 1, 2), epochs=3,
                       steps_per_epoch=20_000, diverge_lr=3.0)


class Page(HTMLParser):
    """Figures (id -> img src), tables (id -> rows of cell texts) and all text of a page."""

    def __init__(self):
        super().__init__()
        self.figures, self.tables, self.text = {}, {}, []
        self._figure = self._table = None
        self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self._figure = attrs.get("id")
        elif tag == "img" and self._figure:
            self.figures[self._figure] = attrs["src"]
        elif tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table] = []
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None
        elif tag in ("td", "th"):
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr":
            self.tables[self._table].append(self._row)

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell += data


def parse_page(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    write_sweep(root / "results", SWEEP)
    assert main(["--results", str(root / "results")]) == 0
    return root / "results" / "report"  # the default --out


def test_every_output_is_written(full_report):
    for name in GENERAL:
        assert (full_report / f"{name}.png").read_bytes().startswith(PNG_MAGIC)
        assert ET.parse(full_report / f"{name}.svg").getroot().tag.endswith("svg")
    for name in ("report.html", "report.md", "collapse.csv", "collapse.json"):
        assert (full_report / name).stat().st_size > 0


def test_html_embeds_every_figure_and_the_verdict_table(full_report):
    page = parse_page(full_report / "report.html")
    assert set(page.figures) == set(GENERAL)
    for src in page.figures.values():
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix):]).startswith(PNG_MAGIC)
    header, *rows = page.tables["verdicts"]
    got = {(r[header.index("check")], r[header.index("cell")], r[header.index("verdict")])
           for r in rows}
    verdicts = json.loads((full_report / "collapse.json").read_text())["verdicts"]
    assert got == {(v["check"], v["cell"], v["verdict"]) for v in verdicts}
    text = "".join(page.text)
    for rule in protocol.wording():
        assert rule in text


def test_verdicts_of_the_synthetic_sweep(full_report):
    payload = json.loads((full_report / "collapse.json").read_text())
    verdicts = {(v["check"], v["cell"]): v["verdict"] for v in payload["verdicts"]}
    assert verdicts[("collapse", "adam/batch/l2")] == "PASS"
    assert verdicts[("collapse", "sgd/none/l2")] == "FAIL"  # the control
    assert verdicts[("collapse", "adam/none/l2")] == "FAIL"
    assert verdicts[("iso_lines", "sgd/batch/l2")] == "PASS"
    assert verdicts[("projection", "sgd/batch/projection")] == "PASS"
    assert verdicts[("projection", "adam/batch/projection")] == "PASS"
    assert verdicts[("equilibrium", "sgd/batch/l2")] == "PASS"
    # sgd's collapse passes as stated, but the strict edge leaves too few settled points
    sgd = next(r for r in payload["collapse"] if r["cell"] == "sgd/batch/l2")
    assert sgd["verdict_by_edge"] == ["INSUFFICIENT", "PASS", "PASS"]
    assert verdicts[("collapse", "sgd/batch/l2")] == "INSUFFICIENT"
    assert sgd["reason"].startswith("not robust")
    assert payload["protocol"] == "5" and payload["thresholds"]["protocol"] == "5"
    # the family: every finite p-value named by protocol.FAMILY, Holm-adjusted together
    family = payload["family"]
    assert {f["test"] for f in family} <= {k for keys in protocol.FAMILY.values() for k in keys}
    assert [f["p_adj"] for f in family] == pytest.approx(
        holm([f["p"] for f in family]))


def test_csv_holds_every_check(full_report):
    frame = pd.read_csv(full_report / "collapse.csv")
    assert set(frame["check"]) == {"collapse", "collapse_train", "projection", "equilibrium",
                                   "equilibrium_point"}
    sgd = frame[(frame["check"] == "collapse") & (frame["cell"] == "sgd/batch/l2")].iloc[0]
    assert abs(sgd["s"] - 1) < 0.1 and sgd["n_diverged_points"] == 4
    assert "3/0.0001" in sgd["diverged"]


def test_markdown_links_every_figure(full_report):
    md = (full_report / "report.md").read_text()
    for name in GENERAL:
        assert f"({name}.png)" in md and f"({name}.svg)" in md
    assert "| check | cell | role | expected | verdict |" in md


def test_same_results_give_identical_collapse_json(full_report, tmp_path):
    results = full_report.parent
    for out in ("a", "b"):
        assert main(["--results", str(results), "--out", str(tmp_path / out), "--no-figures"]) == 0
    a, b = ((tmp_path / o / "collapse.json").read_text() for o in "ab")
    assert a == b == (full_report / "collapse.json").read_text()
    assert str(tmp_path) not in a  # no paths: comparable across machines


def test_file_uri_reads_the_same(full_report, tmp_path):
    uri = (full_report.parent).resolve().as_uri()
    assert main(["--results", uri, "--out", str(tmp_path),
                 "--no-figures"]) == 0
    assert (tmp_path / "collapse.json").read_text() == (full_report / "collapse.json").read_text()


# ---- partial sweeps and errors ----

def partial_sweep(root: Path) -> dict[str, str]:
    """A sweep with missing points, a diverged lr, an unreadable file, a failed trial, a
    trial still running, one not started (in sweep.json only) and a writer's temporary
    files; returns {kind: trial_id}."""
    ids = write_sweep(root, SyntheticSweep(error, updates=("l2", "projection"), seeds=(0, 1),
                                           lrs=(0.01, 0.03, 0.1, 0.3, 3.0), diverge_lr=3.0,
                                           l2s=(1e-4, 3e-4, 1e-3, 3e-3), steps_per_epoch=20_000))
    missing, unreadable, running, failed = ids[0:2], ids[2], ids[3], ids[4]
    for t in missing:  # both seeds of the first (lr, l2) point
        for kind in ("trials", "history"):
            os.remove(root / kind / f"{t}.parquet")
    (root / "trials" / f"{unreadable}.parquet").write_bytes(b"not a parquet file")
    os.remove(root / "trials" / f"{running}.parquet")
    history = pq.read_table(root / "history" / f"{running}.parquet").slice(0, 1)
    pq.write_table(history, root / "history" / f"{running}.parquet")
    row = pq.read_table(root / "trials" / f"{failed}.parquet").to_pylist()[0]
    config = {k: v for k, v in row.items() if "error" not in k and "loss" not in k
              and not k.startswith(("conv", "fc"))}
    pq.write_table(pa.Table.from_pylist([{**config, "status": "failed",
                                          "error": "RuntimeError: out of memory"}]),
                   root / "trials" / f"{failed}.parquet")
    (root / "sweep.json").write_text(json.dumps({"trial_ids": ids + ["feedfacecafe"]}))
    (root / "trials" / f".{ids[6]}.1234abcd.tmp").write_bytes(b"half a file")
    (root / "history" / "_temporary.parquet").write_bytes(b"half a file")
    return {"unreadable": unreadable, "running": running, "failed": failed,
            "missing": missing}


def test_partial_sweep_renders_with_warnings_naming_what_was_skipped(tmp_path, capsys):
    ids = partial_sweep(tmp_path / "results")
    assert main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert f"skipped trial {ids['unreadable']}: unreadable Parquet file" in err
    assert f"skipped trial {ids['running']}: still running or lost: 1 of 3 epochs" in err
    assert f"skipped trial {ids['failed']}: status failed: RuntimeError: out of memory" in err
    assert "sgd/batch/l2: 2 of 20 (lr, l2) grid points have no usable trial: " \
           "(lr=0.01, l2=0.0001), (lr=0.01, l2=0.0003)" in err
    page = parse_page(tmp_path / "out" / "report.html")
    assert set(page.figures) == set(GENERAL) - {"fig6_control_heatmaps"}  # no norm=none trials
    skipped = {r[0]: r[1] for r in page.tables["skipped"][1:]}
    not_started = {t: "not_started" for t in ids["missing"] + ["feedfacecafe"]}
    assert skipped == {ids["unreadable"]: "unreadable", ids["running"]: "running",
                       ids["failed"]: "failed"} | not_started
    summary = json.loads((tmp_path / "out" / "collapse.json").read_text())["inputs"]
    assert (summary["n_found"], summary["n_skipped"]) == (summary["n_used"] + 6, 6)
    assert "1234abcd" not in err and "_temporary" not in err
    collapse = json.loads((tmp_path / "out" / "collapse.json").read_text())["collapse"][0]
    assert sorted(collapse["diverged"]) == [[3.0, l2] for l2 in (1e-4, 3e-4, 1e-3, 3e-3)]
    assert "fig6_control_heatmaps not drawn" in "".join(page.text)


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nowhere", "error: results path not found"),
    (lambda p: p, "error: no results under"),
])
def test_missing_or_empty_results_is_a_one_line_error(tmp_path, capsys, make, message):
    assert main(["--results", str(make(tmp_path)), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_only_failed_trials_is_a_clear_error(tmp_path, capsys):
    partial = tmp_path / "results" / "trials"
    partial.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"trial_id": "abc", "status": "failed",
                                          "error": "boom"}]), partial / "abc.parquet")
    assert main(["--results", str(tmp_path / "results")]) == 2
    assert "no usable trials" in capsys.readouterr().err


def test_help_documents_every_option():
    parser = build_parser()
    text = parser.format_help()
    for action in parser._actions:
        assert action.help, action.option_strings
        for flag in action.option_strings:
            assert flag in text


def test_dynamics_choice(full_report):
    from analysis.collapse import run_checks
    from analysis.load import load_results
    points = run_checks(load_results(str(full_report.parent)), CheckSettings()).points
    cells, warnings = choose_dynamics(points, [], 4)
    assert [c["optimizer"] for c in cells] == ["adam", "sgd"]
    for c in cells:  # the best equilibrated normalized update=l2 point of its optimizer
        pool = points[(points["optimizer"] == c["optimizer"]) & (points["norm"] != "none")
                      & (points["update"] == "l2") & points["equilibrated"]
                      & (points["n_diverged"] == 0)]
        assert c["error_mean"] == pool["error_mean"].min()
    asked = [{"optimizer": "sgd", "norm": "none", "update": "l2", "lr": 0.1, "l2": 1e-3},
             {"optimizer": "sgd", "lr": 0.5}]
    cells, warnings = choose_dynamics(points, asked, 4)
    assert [(c["cell"], c["lr"], c["l2"]) for c in cells] == [("sgd/none/l2", 0.1, 1e-3)]
    assert len(cells[0]["trial_ids"]) == 3
    assert warnings == ["--dynamics {'optimizer': 'sgd', 'lr': 0.5}: no such point; not plotted"]


def test_bad_dynamics_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--results", "x", "--dynamics", "optimiser=sgd"])
    assert exc.value.code == 2 and "bad --dynamics part" in capsys.readouterr().err


def test_module_runs_without_torch_or_ray():
    code = ("import sys, runpy; sys.argv = ['x', '--help']\n"
            "try: runpy.run_module('analysis.report', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert "--results" in out.stdout and "HEAVY []" in out.stdout, out.stderr


def test_single_seed_is_descriptive(tmp_path):
    write_sweep(tmp_path / "r", SyntheticSweep(error, seeds=(0,), steps_per_epoch=20_000))
    assert main(["--results", str(tmp_path / "r"), "--no-figures"]) == 0
    row = json.loads((tmp_path / "r" / "report" / "collapse.json").read_text())["collapse"][0]
    assert row["verdict"] == "DESCRIPTIVE" and abs(row["s"] - 1) < 0.1
    # no seed noise: no interval and no p-value, and nothing enters the family
    assert row["ci_low"] is None and row["lof_p"] is None


@pytest.mark.parametrize("values", [(0.0137, 0.0172, 0.0217), (0.0141, 0.0144, 0.02), (1e-4, 3e-3),
                                    (1e-6, 1e-2)])
def test_log_axis_labels_are_distinct(values):
    """The collapse plot's x labels: no two visible ticks print the same (v3d's narrow
    0.014-0.022 range printed '2e-2' five times)."""
    import matplotlib.pyplot as plt

    from analysis.plots import _log_ticks

    fig, ax = plt.subplots()
    ax.set_xscale("log")
    ax.scatter(values, [0.5] * len(values))
    _log_ticks(ax.xaxis, pd.Series(values))
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    labels = [t.get_text() for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]
    plt.close(fig)
    assert len(labels) >= 2 and len(set(labels)) == len(labels), labels


def test_a_regimes_folder_gets_figure_9_regimes_json_and_its_section(tmp_path, full_report):
    """Scale-invariant projection runs at several lr (the regimes design) add figure 9,
    regimes.json (one run per trial) and the regimes section; other folders get none."""
    sweep = SyntheticSweep(lambda *a: 0.5, updates=("projection",), lrs=(0.01, 0.1, 1.0, 10.0),
                           l2s=(0.0,), seeds=(0, 1), epochs=4,
                           extra={"scale_invariant": True, "l2_scope": "normalized"})
    write_sweep(tmp_path / "results", sweep)
    assert main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert (out / "fig9_regimes.png").read_bytes().startswith(PNG_MAGIC)
    runs = json.loads((out / "regimes.json").read_text())["runs"]
    assert sorted((r["seed"], r["lr"]) for r in runs) == sorted(
        (s, lr) for s in (0, 1) for lr in (0.01, 0.1, 1.0, 10.0))
    assert "three regimes" in (out / "report.md").read_text()
    assert not (full_report / "regimes.json").exists() and not (full_report / "fig9_regimes.png").exists()


def test_a_projection_only_folder_reports_its_one_check(tmp_path):
    """A folder like results/v4b (update=projection only, 3 lr x 3 l2 x 2 seeds, error flat in
    l2): one projection verdict, a family of its 2 p-values, the checks with no cell as
    "_none_" rather than header-only Markdown tables, and figure 3 as the projection panel
    alone (an empty update=l2 column would hide the shared y ticks), with its legend."""
    sweep = SyntheticSweep(lambda o, n, u, lr, l2: 0.25 + 0.02 * math.log2(lr / 0.05),
                           updates=("projection",), lrs=(0.025, 0.05, 0.1),
                           l2s=(6.25e-5, 5e-4, 4e-3), seeds=(0, 1), noise=0.002)
    write_sweep(tmp_path / "r", sweep)
    assert main(["--results", str(tmp_path / "r")]) == 0
    out = tmp_path / "r" / "report"
    payload = json.loads((out / "collapse.json").read_text())
    assert [(v["check"], v["verdict"]) for v in payload["verdicts"]] == [("projection", "PASS")]
    assert len(payload["family"]) == 2
    md = (out / "report.md").read_text()
    assert "_none_" in md and not {"|  |", "|"} & set(md.splitlines())
    from analysis import plots
    from analysis.collapse import run_checks
    from analysis.load import load_results
    checks = run_checks(load_results(str(tmp_path / "r")), sensitivity=False)
    (only,) = plots.l2_sensitivity(checks.points, checks.projection).axes
    assert only.get_title().endswith("projection") and only.get_legend() is not None
    assert only.yaxis.get_ticklabels()[0].get_visible()

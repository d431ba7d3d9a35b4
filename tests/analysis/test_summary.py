"""python -m analysis.summary: the README's results table from a report's collapse.json."""
import json
from pathlib import Path

from analysis.summary import COLUMNS, main, markdown, optimum_rows, rows

RESULTS = Path(__file__).resolve().parents[2] / "results"
CPU = RESULTS / "cpu" / "collapse.json"


def test_one_row_per_cell_with_the_json_numbers():
    payload = json.loads(CPU.read_text())
    cells = {r["cell"] for name in ("collapse", "projection", "equilibrium")
             for r in payload[name]}
    table = {r["cell"]: r for r in rows(payload)}
    assert len(table) == len(cells) == 8
    sgd = next(r for r in payload["collapse"] if r["cell"].startswith("sgd/batch/l2"))
    row = table["sgd/batch/l2 all"]
    # one seed per point: DESCRIPTIVE as stated, INSUFFICIENT at the strict edge
    assert sgd["verdict_by_edge"] == ["INSUFFICIENT", "DESCRIPTIVE", "DESCRIPTIVE"]
    assert row["collapse"] == "INSUFFICIENT (not robust: INSUFFICIENT/DESCRIPTIVE/DESCRIPTIVE)"
    assert row[COLUMNS[2]] == f"{sgd['s']:.2f} ({sgd['s_theory']:g})"  # one seed: no interval
    proj = next(r for r in payload["projection"]
                if r["cell"] == "sgd/batch/projection, l2_scope=normalized")
    assert table["sgd/batch/projection normalized"]["l2 effect [90% CI]"] == (
        f"{proj['l2_effect']:+.4f} [{proj['l2_effect_low']:+.4f}, {proj['l2_effect_high']:+.4f}]")
    assert table["sgd/batch/projection normalized"]["projection"] == proj["verdict"] == "PASS"
    adam = next(r for r in payload["equilibrium"] if r["cell"].startswith("adam/batch/l2"))
    assert table["adam/batch/l2 all"]["balance"] == f"{adam['balance_median']:.3f}"
    text = markdown(payload)
    assert text.count("\n| ") == 1 + 8 and text.startswith("Protocol 5.")


def test_not_equilibrated_cells_show_their_descriptive_slope():
    """results/v3d: no point settled although the budget held the forecast relaxation times."""
    (v3d,) = rows(json.loads((RESULTS / "v3d" / "collapse.json").read_text()))
    assert [v3d[k] for k in ("collapse", "iso-lines", "train-loss collapse", "equilibrium")] \
        == ["NOT EQUILIBRATED"] * 4
    payload = json.loads((RESULTS / "v3d" / "collapse.json").read_text())
    (c,) = payload["collapse"]
    assert v3d[COLUMNS[2]] == f"{c['s']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}] (0.5)"
    assert v3d[COLUMNS[3]] == ""  # a descriptive fit has no p-value


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing.json")]) == 2
    (tmp_path / "collapse.json").write_text('{"x": 1}')
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("collapse.json" in line for line in err)


def _optimum(cell: str, p_star: float, **kw) -> dict:
    """One record of collapse.json's optimum table (analysis/optimum.py's columns)."""
    return {"cell": cell, "s_theory": kw.get("s", 1.0), "p_min": 1e-5, "p_max": 8e-5,
            "p_best_point": 2e-5, "best_interior": True, "p_star": p_star,
            "p_star_low": kw.get("low", 1.5e-5), "p_star_high": kw.get("high", 3e-5),
            "inside": kw.get("inside", True), "per_lr": kw.get("per_lr", []),
            "lr_minima_overlap": kw.get("overlap", True)}


def test_optimum_table_by_hand(tmp_path, capsys):
    payload = {"verdicts": [], "optimum": [
        _optimum("sgd/batch/l2, l2_scope=normalized, scale_invariant=False", 2.2e-5,
                 per_lr=[[0.05, 2e-5, 1e-5, 4e-5], [0.1, float("nan"), None, None]]),
        _optimum("adam/batch/l2, l2_scope=normalized, scale_invariant=True", float("nan"),
                 s=0.5, low=float("nan"), high=float("nan"), inside=False, overlap=False)]}
    sgd, adam = optimum_rows(payload)
    assert sgd["cell"] == "sgd/batch/l2 normalized" and sgd["product"] == "lr*l2"
    assert sgd["p* [95% CI]"] == "2.2e-05 [1.5e-05, 3e-05]" and sgd["inside"] == "yes"
    assert sgd["p* per lr [95% CI]"] == \
        "lr 0.05: 2e-05 [1e-05, 4e-05]; lr 0.1: n/a"
    assert sgd["best point"] == "2e-05 (interior)" and sgd["design"] == "1e-05..8e-05"
    assert adam["product"] == "lr^2*l2" and adam["p* [95% CI]"] == "n/a"
    assert (adam["inside"], adam["lr minima overlap"]) == ("no", "no")
    [ends] = optimum_rows({"optimum": [_optimum("sgd/batch/l2", 1e-5, overlap=None)]})
    assert ends["lr minima overlap"] == "n/a (all at one end)"
    path = tmp_path / "collapse.json"
    path.write_text(json.dumps(payload).replace("NaN", "null"))
    assert main([str(path), "--optimum"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| cell | product |") and len(out) == 2 + 2

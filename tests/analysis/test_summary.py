"""python -m analysis.summary: the README's results table from a report's collapse.json."""
import json
from pathlib import Path

from analysis.summary import COLUMNS, main, markdown, rows

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
    assert row["collapse"] == "DESCRIPTIVE (would PASS)"
    assert row[COLUMNS[2]] == f"{sgd['s']:.2f} [{sgd['ci_low']:.2f}, {sgd['ci_high']:.2f}] (1)"
    proj = next(r for r in payload["projection"]
                if r["cell"] == "sgd/batch/projection, l2_scope=normalized")
    assert table["sgd/batch/projection normalized"]["l2 effect (p)"] == \
        f"{proj['l2_effect']:.4f} ({proj['l2_p']:.2g})"
    assert table["adam/batch/l2 all"]["balance"] == "0.695"
    text = markdown(payload)
    assert text.count("\n| ") == 1 + 8 and "Rules version 2." in text


def test_forecast_basis_is_marked():
    """results/v3d (rules 4) was judged on its forecast-ready points; v3 (rules 3) was not."""
    (v3d,) = rows(json.loads((RESULTS / "v3d" / "collapse.json").read_text()))
    assert [v3d[k] for k in ("collapse", "iso-lines", "train-loss collapse", "equilibrium")] \
        == ["FAIL (forecast)"] * 4
    v3 = rows(json.loads((RESULTS / "v3" / "collapse.json").read_text()))
    assert not any("forecast" in str(v) for r in v3 for v in r.values())


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing.json")]) == 2
    (tmp_path / "collapse.json").write_text('{"x": 1}')
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("collapse.json" in line for line in err)

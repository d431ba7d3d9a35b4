"""The real smoke sweep (sweeps/run_grid.py --grid smoke on real CIFAR-10) renders end to end."""
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from conftest import REPO

from analysis.report import FIGURES, main
from analysis.synthetic import SyntheticSweep, write_sweep

RUNNER = REPO / "sweeps" / "run_grid.py"


@pytest.mark.slow
@pytest.mark.skipif(not RUNNER.exists(), reason="sweeps/run_grid.py (the sweep runner) is not in yet")
def test_real_smoke_sweep_renders(cifar_dir, tmp_path, capsys):
    cmd = [sys.executable, str(RUNNER), "--grid", "smoke", "--data-dir", str(cifar_dir),
           "--storage", str(tmp_path), "--name", "smoke"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results, out = tmp_path / "smoke", tmp_path / "report"
    assert main(["--results", str(results), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "collapse.json").read_text())
    n_trials = len(list((results / "trials").glob("*.parquet")))
    assert data["inputs"]["n_used"] + data["inputs"]["n_skipped"] == data["inputs"]["n_found"]
    assert data["inputs"]["n_found"] == n_trials > 0
    # every verdict row of the JSON is printed and rendered; the smoke grid (one lr per
    # optimizer, one epoch) cannot support a collapse verdict
    html = (out / "report.html").read_text()
    for v in data["verdicts"]:
        assert v["cell"] in printed and v["cell"] in html
        if v["check"] == "collapse":
            assert v["verdict"] == "INSUFFICIENT"
    # a synthetic sweep's files have exactly the real sweep's schema (one writer, one schema)
    write_sweep(tmp_path / "synthetic", SyntheticSweep(error=lambda *a: 0.5, lrs=(0.1,), l2s=(1e-3,),
                                                         seeds=(0,)))
    for kind in ("trials", "history"):
        real = pq.read_schema(next((results / kind).glob("*.parquet")))
        synthetic = pq.read_schema(next((tmp_path / "synthetic" / kind).glob("*.parquet")))
        assert synthetic.equals(real), f"{kind}: {set(synthetic.names) ^ set(real.names)}"
    drawn = {name for name in FIGURES if (out / f"{name}.png").exists()}
    assert {"fig1_heatmaps", "fig3_l2_sensitivity", "fig5_best_over_lr"} <= drawn
    for name in drawn:
        assert f'id="{name}"' in html and (out / f"{name}.svg").exists()

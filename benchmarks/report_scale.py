"""How long python -m analysis.report takes on a large sweep, next to reading the files alone.

    python benchmarks/report_scale.py [--trials 2000] [--epochs 30] [--keep DIR]

Writes synthetic results in the runner's schema (4 optimizers x {batch, layer, none} x
{l2, projection}: 20 cells, each 5 lr x 5 l2 (0 and 4 positive) x seeds), then times
(1) the floor: pandas.read_parquet of every history and trials file plus one concat per kind,
(2) the report: importing analysis.report (fresh interpreter), loading, the checks, and the
figures + report files. Target: the report within 10x of the floor and under 60 s.
"""
from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.collapse import CheckSettings, run_checks  # noqa: E402
from analysis.load import load_results  # noqa: E402
from analysis.report import write_report  # noqa: E402
from analysis.synthetic import SyntheticSweep, write_sweep  # noqa: E402

CELLS = 20  # 4 optimizers x (2 normalized norms x 2 updates + norm=none x l2)
POINTS = 25  # 5 lr x 5 l2


def error(optimizer: str, norm: str, update: str, lr: float, l2: float) -> float:
    """lr*l2 (lr^2*l2 for adam) collapse with a normalization, lr only with projection."""
    if update == "projection" or norm == "none":
        return 0.1 + 0.05 * (math.log10(lr) + 1.5) ** 2
    z = math.log10(lr ** (2 if optimizer == "adam" else 1) * max(l2, 1e-7))
    return 0.1 + 0.05 * (z - (-5.0 if optimizer == "adam" else -3.5)) ** 2


def make_results(root: Path, trials: int, epochs: int) -> int:
    """Write about `trials` trials of `epochs` epochs; return how many were written."""
    seeds = max(1, round(trials / (CELLS * POINTS)))
    sweep = SyntheticSweep(error, optimizers=("sgd", "momentum", "adam", "adamw"),
                           norms=("batch", "layer", "none"), updates=("l2", "projection"),
                           lrs=(0.003, 0.01, 0.03, 0.1, 3.0), l2s=(0.0, 1e-4, 3e-4, 1e-3, 3e-3),
                           seeds=tuple(range(seeds)), epochs=epochs, steps_per_epoch=390,
                           diverge_lr=3.0)
    return len(write_sweep(root, sweep))


def floor_seconds(root: Path) -> float:
    """pandas alone: read every Parquet file, concat per kind."""
    start = time.perf_counter()
    for kind in ("history", "trials"):
        pd.concat([pd.read_parquet(f) for f in sorted((root / kind).glob("*.parquet"))])
    return time.perf_counter() - start


def import_seconds() -> float:
    """Importing analysis.report (matplotlib, seaborn, pandas) in a fresh interpreter."""
    code = "import time; t = time.perf_counter(); import analysis.report; " \
           "print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=2000, help="about this many trials")
    parser.add_argument("--epochs", type=int, default=30, help="history rows per trial")
    parser.add_argument("--keep", type=Path, help="write results and report here (kept)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="l2bn-report-scale-"))
    start = time.perf_counter()
    n = make_results(root / "results", args.trials, args.epochs)
    print(f"wrote {n} trials x {args.epochs} epochs ({2 * n} files) in "
          f"{time.perf_counter() - start:.1f} s under {root}")
    floor = floor_seconds(root / "results")
    t_import = import_seconds()
    t0 = time.perf_counter()
    results = load_results(str(root / "results"))
    t1 = time.perf_counter()
    run_checks(results, CheckSettings())  # timed alone; write_report redoes it
    t2 = time.perf_counter()
    write_report(results, root / "report", CheckSettings(), [], 4, 100)
    t3 = time.perf_counter()
    total = t_import + (t1 - t0) + (t3 - t2)
    print(f"floor: pandas.read_parquet of all files  {floor:7.2f} s")
    print(f"report: import                            {t_import:7.2f} s")
    print(f"report: load                              {t1 - t0:7.2f} s")
    print(f"report: checks                            {t2 - t1:7.2f} s")
    print(f"report: checks + figures + files          {t3 - t2:7.2f} s")
    print(f"report total (import + load + write)      {total:7.2f} s  = {total / floor:.1f} x floor"
          f"  (target < 10 x and < 60 s: {'met' if total < 10 * floor and total < 60 else 'MISSED'})")
    if args.keep is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()

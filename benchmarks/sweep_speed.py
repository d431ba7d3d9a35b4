"""End-to-end sweep speed: one small real-data grid through `sweeps/run_grid.py` (a local Ray
Tune instance, Parquet files and checkpoints included), run with v2's settings and with
today's defaults, in one run:

- v2: `--fuse 1 --cpus-per-trial 1` and NCHW activations (`--set layout=nchw`): one
  single-threaded model per Tune trial, one trial per CPU;
- new: `--fuse auto` (the probe picks models per stack and threads per trial) and
  channels_last, twice: as a machine's first sweep of this shape (`--reprobe`: the probe
  runs, a few seconds) and as a later one (the rates cached by that probe are reused).

The grid: sgd + batch norm, width 8, batch 32, 3 lr x 3 l2 x 2 seeds, 2 epochs of 10,000 real
CIFAR-10 images (the CPU studies' subset size; with 2,048 images a trial's fixed costs, Ray's
start-up and the probe's seconds outweigh its training). It prints each run's wall time (the
whole command: Ray start-up and the probe included) and the ratio of model-images (trials x
epochs x training images) per second of wall time. Settings alternate (v2, new, new, v2, ...)
over --repeats so that a change in the machine's load hits both; the ratio is of the medians.
Load averages are printed before and after: on a shared machine, compare ratios, not rates.

    python benchmarks/sweep_speed.py --data-dir DIR [--repeats 1] [--num-cpus 2]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRID = """
name: speed
fixed: {{data: cifar10, optimizer: sgd, norm: batch, width: 8, batch_size: 32,
         epochs: {epochs}, n_train: {n_train}, n_test: 1000, augment: true}}
axes:
  seed: [0, 1]
  lr: [0.025, 0.05, 0.1]
  l2: [1e-4, 5e-4, 1e-3]
"""
N_TRIALS = 18
V2, COLD, WARM = ("v2 (--fuse 1 --cpus-per-trial 1, NCHW)", "new, first sweep of the shape (probe)",
                  "new, shape probed before (cached)")
SETTINGS = {V2: (["--fuse", "1", "--cpus-per-trial", "1", "--set", "layout=nchw"], {}),
            COLD: (["--fuse", "auto", "--reprobe"], {}),
            WARM: (["--fuse", "auto"], {})}


def run(grid: Path, storage: Path, name: str, flags: list[str], env: dict[str, str],
        args: argparse.Namespace) -> tuple[float, str]:
    """Wall seconds of one whole run_grid command, and its output."""
    cmd = [sys.executable, str(REPO / "sweeps" / "run_grid.py"), "--grid", str(grid),
           "--data-dir", args.data_dir, "--storage", str(storage), "--name", name,
           "--num-cpus", str(args.num_cpus), "--progress-interval", "600", *flags]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, **env}, timeout=3600)
    wall = time.perf_counter() - start
    if out.returncode != 0 or f"{N_TRIALS} trials: {N_TRIALS} completed" not in out.stdout:
        sys.exit(f"{name} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return wall, out.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("L2BN_CIFAR_DIR"),
                   help="directory holding cifar-10-batches-py (default: $L2BN_CIFAR_DIR)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--num-cpus", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--n-train", type=int, default=10_000)
    args = p.parse_args()
    if not args.data_dir:
        p.error("--data-dir (or $L2BN_CIFAR_DIR) is required: the trials train on real CIFAR-10")
    images = N_TRIALS * args.epochs * args.n_train
    print(f"load average before: {os.getloadavg()}", flush=True)
    walls: dict[str, list[float]] = {label: [] for label in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="sweep-speed-") as tmp:
        grid = Path(tmp) / "speed.yaml"
        grid.write_text(GRID.format(epochs=args.epochs, n_train=args.n_train))
        for rep in range(args.repeats):
            for i, (label, (flags, env)) in enumerate(SETTINGS.items()):
                env = {**env, "L2BN_CACHE": str(Path(tmp) / "cache")}  # not the user's cache
                wall, out = run(grid, Path(tmp) / "runs", f"r{rep}s{i}", flags, env, args)
                walls[label].append(wall)
                fit = re.search(rf"{N_TRIALS} trials: .* \((\d+) s\)", out).group(1)
                chosen = [ln.strip() for ln in out.splitlines()
                          if ln.startswith(("--fuse auto", "sweep '")) or "<- chosen" in ln]
                print(f"[{label}, run {rep + 1}] wall {wall:.1f} s (Tuner.fit {fit} s)", flush=True)
                for line in chosen:
                    print(f"    {line}", flush=True)
    print(f"load average after: {os.getloadavg()}")
    print(f"\n{N_TRIALS} trials x {args.epochs} epochs x {args.n_train} images = {images:,} "
          f"model-images, width 8, batch 32, sgd/batch, {args.num_cpus} CPUs")
    print(f"{'settings':<42} {'wall s (median)':>16} {'model-images/s':>15}")
    rates = {}
    for label, ws in walls.items():
        rates[label] = images / statistics.median(ws)
        print(f"{label:<42} {statistics.median(ws):>16.1f} {rates[label]:>15.0f}")
    print(f"ratio new / v2: {rates[COLD] / rates[V2]:.2f}x as a first sweep of the shape (probe "
          f"included), {rates[WARM] / rates[V2]:.2f}x with its cached probe")


if __name__ == "__main__":
    main()

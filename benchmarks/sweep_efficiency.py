"""Sweep efficiency: how much of the cluster's time goes into the trials themselves.

A grid of short real trials (real CIFAR-10 subset, a few seconds each) runs through the same
Ray Tune code path as `sweeps/run_grid.py` (per-epoch Parquet files and checkpoints
included) on `--slots` CPU slots, once with actor reuse (the runner's default) and once with
a fresh worker process per trial (Tune's default). For each it prints

    efficiency = sum of the trials' own run times / (slots x wall time of the sweep)

where a trial's own run time is measured inside the trainable (data loading, training,
evaluation, checkpoints: everything but Ray's per-trial start-up and scheduling), and the
wall time is Tuner.fit() (the Ray instance is started once, before either sweep).

    python benchmarks/sweep_efficiency.py --data-dir DIR [--trials 16] [--slots 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from l2bn.config import TrialConfig  # noqa: E402
from sweeps.run_grid import SweepOptions, run_sweep  # noqa: E402


def grid(args: argparse.Namespace) -> list[TrialConfig]:
    """`trials` distinct short real trials (seeds), all the same cost."""
    base = TrialConfig(optimizer="sgd", lr=0.1, l2=1e-3, norm="batch", epochs=args.epochs,
                       n_train=args.n_train, n_test=args.n_test, width=8, batch_size=128,
                       data="cifar10", data_dir=str(Path(args.data_dir).resolve()))
    return [base.replace(seed=s) for s in range(args.trials)]


def measure(configs: list[TrialConfig], args: argparse.Namespace, storage: str,
            reuse: bool) -> dict[str, float]:
    name = "reuse" if reuse else "fresh"
    outcome = run_sweep(configs, SweepOptions(
        name=name, storage=storage, cpus_per_trial=1, num_cpus=args.slots, reuse_actors=reuse,
        max_failures=0, progress=False))
    trials = pd.read_parquet(f"{storage}/{name}/trials")
    assert len(trials) == len(configs) and set(trials.status) == {"completed"}, trials.status
    busy = float(trials.wall_time_s.sum())
    return {"wall_s": outcome.fit_wall_s, "trial_s_sum": busy,
            "trial_s_mean": busy / len(trials),
            "efficiency": busy / (args.slots * outcome.fit_wall_s)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("L2BN_CIFAR_DIR"),
                   help="directory holding cifar-10-batches-py (default: $L2BN_CIFAR_DIR)")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--slots", type=int, default=2, help="CPUs of the local Ray instance")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--n-train", type=int, default=2048)
    p.add_argument("--n-test", type=int, default=1000)
    args = p.parse_args()
    if not args.data_dir:
        p.error("--data-dir (or $L2BN_CIFAR_DIR) is required: the trials train on real CIFAR-10")
    import ray
    configs = grid(args)
    with tempfile.TemporaryDirectory(prefix="sweep-eff-") as storage:
        # the first run_sweep starts the local Ray instance (num_cpus=slots); both share it
        results = {"fresh worker per trial (Tune default)": measure(configs, args, storage, False),
                   "actor reuse (run_grid default)": measure(configs, args, storage, True)}
        ray.shutdown()
    print(f"\n{args.trials} trials x {args.epochs} epochs of {args.n_train} real CIFAR-10 "
          f"images (width 8, 1 CPU each) on {args.slots} slots")
    print(f"{'mode':<40} {'wall s':>8} {'sum trial s':>12} {'mean trial s':>13} {'efficiency':>11}")
    for mode, r in results.items():
        print(f"{mode:<40} {r['wall_s']:>8.1f} {r['trial_s_sum']:>12.1f} {r['trial_s_mean']:>13.2f} "
              f"{r['efficiency']:>10.0%}")
    fresh, reuse = results.values()
    print(f"reuse / fresh: efficiency x{reuse['efficiency'] / fresh['efficiency']:.2f}, "
          f"wall time x{fresh['wall_s'] / reuse['wall_s']:.2f} faster")


if __name__ == "__main__":
    main()

"""Images/s of a fused group of K models (one stack, l2bn/stack.py) against the same K models
trained one after the other, in the same run, on whatever device is there; and, from the
measured rates, the estimated hours of the `paper` grid.

    python benchmarks/fused_throughput.py [--data-dir DIR] [--device cuda] [--ks 1 8 32 64 49]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from l2bn.config import ConfigError, TrialConfig
from l2bn.train import Trial

PAPER_IMAGES = 5292 * 100 * 50_000  # trials x epochs x training images (sweeps/grids/paper.yaml)


@dataclass
class Measurement:
    """One group's timed training: model-images/s (median over repeats) and its parts."""

    images_per_s: float
    warmup_s: float        # the first epoch: allocator, cuDNN autotuning, compilation
    times_s: list[float]   # each timed epoch
    images: int            # images each timed epoch trained, per model


def measure(cfgs: list[TrialConfig], steps: int, repeats: int = 1,
            compile_backend: str | None = None) -> Measurement:
    """Combined model-images/s of one Trial over `cfgs` (metrics included), after a warm-up
    epoch: the images each timed epoch really trained, times the models that trained on them.
    `compile_backend` wraps the stacked forward in torch.compile. ConfigError (before
    training) if the data holds fewer than batch_size x steps images."""
    trial = Trial([c.replace(n_train=cfgs[0].batch_size * steps) for c in cfgs])
    if compile_backend:  # benchmark only: the sweep trains eagerly until this is measured
        trial.stack.forward = torch.compile(trial.stack.forward, backend=compile_backend)
    start = time.perf_counter()
    trial.train_epoch()  # warm-up
    trial.sync()
    warmup = time.perf_counter() - start
    times, images = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        stats = trial.train_epoch()
        trial.sync()
        times.append(time.perf_counter() - start)
        if stats is None or len(trial.active) < len(cfgs):
            raise RuntimeError("a model diverged during the benchmark: its rate would count "
                               "images it did not train on")
        images = stats["train_images"]
    return Measurement(images * len(cfgs) / statistics.median(times), warmup, times, images)


def rate(cfgs: list[TrialConfig], steps: int) -> float:
    """measure()'s model-images/s of one timed epoch."""
    return measure(cfgs, steps).images_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="CIFAR-10 copy (default: synthetic images)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32, 64, 49])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--optimizer", default="sgd")
    parser.add_argument("--norm", default="batch")
    args = parser.parse_args()
    base = TrialConfig(optimizer=args.optimizer, norm=args.norm, width=args.width,
                       batch_size=args.batch_size, device=args.device,
                       data="cifar10" if args.data_dir else "synthetic", data_dir=args.data_dir)
    try:
        single = rate([base], args.steps)  # K separate models take K times as long as one
    except ConfigError as exc:  # e.g. more steps than the 512 synthetic images hold
        sys.exit(f"error: {exc} (--steps x --batch-size images per measurement; "
                 "pass --data-dir for more)")
    device = Trial(base.replace(n_train=base.batch_size)).device
    print(f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}) "
          f"threads={torch.get_num_threads()} width={args.width} batch={args.batch_size} "
          f"{args.optimizer}/{args.norm} steps={args.steps}")
    print(f"{'K':>4} {'fused img/s':>12} {'separate img/s':>15} {'ratio':>6} {'paper grid h':>13}")
    for k in args.ks:
        cfgs = [base.replace(lr=0.01 * (1 + i), l2=1e-4 * i) for i in range(k)]
        fused = rate(cfgs, args.steps)
        print(f"{k:>4} {fused:12.0f} {single:15.0f} {fused / single:6.2f} "
              f"{PAPER_IMAGES / fused / 3600:13.0f}", flush=True)


if __name__ == "__main__":
    main()

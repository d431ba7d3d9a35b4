"""Training speed with dead channels whose weights decay into subnormal floats, with the
CPU's flush-to-zero off (IEEE gradual underflow) against on (what a CPU trial sets,
l2bn.train.flush_subnormals), in one process on the same group.

The state v4c's sweep reached (read from its checkpoints): adam + batch norm with coupled
L2, 3-12% of each conv layer's channels dead, their weights and first Adam moments subnormal
(1e-42 to 1e-44) while the second moments still hold the gradients of when they were alive
(1e-8 to 1e-7), so L2 alone shrinks them slowly and they stay subnormal. The run trains a
group for one epoch, puts a share of each conv layer's channels into that state (batch norm
gain 0 and shift -1, so the ReLU passes nothing back), then times training epochs in each
mode, alternating.

    python benchmarks/subnormal.py [--dead 0.12] [--k 4] [--width 16] [--epochs 3]
"""
from __future__ import annotations

import argparse
import time

import torch

from l2bn.config import TrialConfig
from l2bn.schema import CONV_LAYERS
from l2bn.train import Trial


def dead_group(k: int, width: int, dead: float) -> Trial:
    """A fused adam + batch norm group, trained one epoch, whose conv layers each have `dead`
    of their channels dead with subnormal weights and first moments."""
    cfgs = [TrialConfig(data="synthetic", device="cpu", optimizer="adam", norm="batch",
                        lr=4e-3 * 2 ** (i % 2), l2=1e-4 * 2 ** (i // 2), width=width,
                        batch_size=32, epochs=100, n_test=64, seed=0) for i in range(k)]
    trial = Trial(cfgs)
    torch.set_flush_denormal(False)  # a CPU Trial turns it on; the state is built without
    trial.train_epoch()  # Adam's moments exist and hold real gradients
    params, state = trial.stack.params, trial.optimizer.state
    with torch.no_grad():
        for layer in CONV_LAYERS:
            name = f"{layer}.conv.weight"
            n = max(1, round(dead * params[name].shape[1]))
            for t in (params[name], state[name]["exp_avg"]):
                t[:, :n] *= 1e-42 / t[:, :n].abs().amax()  # v4c's magnitudes
            params[f"{layer}.norm.weight"][:, :n] = 0.0
            params[f"{layer}.norm.bias"][:, :n] = -1.0
    return trial


def subnormal_share(trial: Trial) -> float:
    """Share of the conv weights that are subnormal."""
    # on the bits (exponent 0, mantissa not): with flush-to-zero on, comparisons see them as 0
    bits = [trial.stack.params[f"{layer}.conv.weight"].detach().view(torch.int32) & 0x7FFFFFFF
            for layer in CONV_LAYERS]
    sub = sum(((b > 0) & (b < 0x00800000)).sum().item() for b in bits)
    return sub / sum(b.numel() for b in bits)


def timed_epoch(trial: Trial, flush: bool) -> float:
    """Seconds for one training epoch with flush-to-zero `flush`."""
    torch.set_flush_denormal(flush)
    start = time.perf_counter()
    trial.train_epoch()
    return time.perf_counter() - start


def main() -> None:
    """Print the epoch time per mode and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dead", type=float, default=0.12)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    slow = dead_group(args.k, args.width, args.dead)
    fast = dead_group(args.k, args.width, args.dead)
    print(f"subnormal share of the conv weights before timing: {subnormal_share(slow):.3f}")
    timed_epoch(slow, False)  # warm-up
    timed_epoch(fast, True)
    print(f"after a warm-up epoch: flush off {subnormal_share(slow):.3f}, "
          f"on {subnormal_share(fast):.3f}")
    off, on = [], []
    for _ in range(args.epochs):
        off.append(timed_epoch(slow, False))
        on.append(timed_epoch(fast, True))
    print(f"K={args.k} width {args.width}, {args.dead:.0%} of channels dead, 1 thread, "
          f"{args.epochs} epochs each (synthetic 512 images, batch 32)")
    print(f"flush off: {min(off):.3f} s per epoch; flush on: {min(on):.3f} s; "
          f"ratio off/on {min(off) / min(on):.2f}x")


if __name__ == "__main__":
    main()

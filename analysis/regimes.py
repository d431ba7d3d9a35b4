"""The three regimes of training at a fixed effective learning rate (Kodryan et al. 2022,
"Training scale-invariant neural networks on the sphere can happen in three regimes").

With every trained weight scale-invariant and projected to unit norm after each step
(scale_invariant=True, update=projection), the effective learning rate is lr itself, held
fixed. Each run is classified from its own train-loss and train-error trajectory by the rule
below; a boundary between two regimes is, per seed, the geometric mean of the largest lr in
the lower regime and the smallest lr in the higher one.

Rule history (both versions fixed before any regimes sweep ran): version 1 (commit 87f4a80)
judged the last 3 epochs and called convergence only at train loss <= 0.05 and divergence only
at train error >= 0.87. Sizing runs (not a study) showed both unreachable in this network:
its classifier is frozen at init and its features normalized without gains, so the logits are
bounded and the loss stops well above 0.05 at zero train error (width 16, 512 images, lr 0.1:
train error 0 from epoch ~100, train loss 0.23 at epoch 181); and at lr 100, where the weights
are re-randomized every few steps, the train error hovers at 0.86-0.90 around 0.87 while the
loss sits above ln 10. Version 2 adds a train-error floor for convergence and a loss at chance
for divergence (the old criteria still count), and judges a window that scales with the run
(its last tenth, at least 3 epochs): a 3-epoch window of a 250-epoch run sees a still-falling
loss as flat.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

CONVERGENCE, EQUILIBRIUM, DIVERGENCE, UNDECIDED = (
    "convergence", "chaotic equilibrium", "divergence", "undecided")
ORDER = (CONVERGENCE, EQUILIBRIUM, DIVERGENCE)  # as the effective learning rate grows
RULE_VERSION = 2
LAST = 3  # the judged window: the last WINDOW_FRACTION of the epochs, at least LAST of them ...
WINDOW_FRACTION = 0.1
PLATEAU_DRIFT = 0.10  # ... and |ln(window mean / the window before)| of the train loss at a plateau
LOSS_FLOOR = 0.05  # window-mean train loss at or below this: convergence ...
TRAIN_ERROR_FLOOR = 0.01  # ... or window-mean train error at or below this (bounded logits)
CHANCE_TRAIN_ERROR = 0.87  # window-mean train error at or above this (chance 0.9 less 0.03) ...
CHANCE_LOSS = 0.97 * math.log(10)  # ... or window-mean train loss at or above 97% of ln 10: divergence

TEXT = (
    f"**Regimes** (rule version {RULE_VERSION}; a run of the scale-invariant network with the "
    f"projection update, whose effective learning rate is lr). Its window is the last "
    f"{WINDOW_FRACTION:.0%} of its epochs (at least {LAST}). **Divergence** when it diverged or "
    f"the window's mean train error is >= {CHANCE_TRAIN_ERROR:g} (chance 0.9 less 0.03) or its "
    f"mean train loss >= {CHANCE_LOSS:.3f} (97% of ln 10, a guess's loss); else **convergence** "
    f"when its mean train error is <= {TRAIN_ERROR_FLOOR:g} or its mean train loss <= "
    f"{LOSS_FLOOR:g} (the frozen classifier bounds the logits, so the loss itself stays above "
    f"zero); else **chaotic equilibrium** when the train loss has stopped moving: |ln(window "
    f"mean / mean of the window before)| <= {PLATEAU_DRIFT:g}; else **undecided** (still "
    "descending). A boundary between two regimes, per seed, is the geometric mean of the "
    "largest lr in the lower regime and the smallest lr in the higher one; it is reported over "
    "seeds (median and range) only when every lr of that seed is decided and the regimes are "
    "ordered in lr.")


def window(n_epochs: int) -> int:
    """Epochs in the judged window: the last WINDOW_FRACTION of the run, at least LAST."""
    return max(LAST, math.ceil(WINDOW_FRACTION * n_epochs))


def classify(train_loss: np.ndarray, train_error: np.ndarray, diverged: bool = False) -> str:
    """The regime of one run from its per-epoch train loss and train error."""
    loss, err = np.asarray(train_loss, float), np.asarray(train_error, float)
    ok = np.isfinite(loss) & np.isfinite(err)
    loss, err = loss[ok], err[ok]
    if diverged or not len(loss):
        return DIVERGENCE
    w = window(len(loss))
    end, end_err = loss[-w:].mean(), err[-w:].mean()
    if end_err >= CHANCE_TRAIN_ERROR or end >= CHANCE_LOSS:
        return DIVERGENCE
    if end_err <= TRAIN_ERROR_FLOOR or end <= LOSS_FLOOR:
        return CONVERGENCE
    if len(loss) >= 2 * w and abs(np.log(end / loss[-2 * w:-w].mean())) <= PLATEAU_DRIFT:
        return EQUILIBRIUM
    return UNDECIDED


def boundaries(runs: pd.DataFrame) -> pd.DataFrame:
    """Per seed and boundary (convergence|equilibrium, equilibrium|divergence): the boundary lr.
    `runs` has columns seed, lr, regime."""
    rows = []
    for seed, r in runs.groupby("seed", sort=True):
        r = r.sort_values("lr")
        if (r["regime"] == UNDECIDED).any():
            continue
        rank = r["regime"].map(ORDER.index).to_numpy()
        if (np.diff(rank) < 0).any():  # regimes not ordered in lr: no boundary for this seed
            continue
        lr = r["lr"].to_numpy(float)
        for k, (low, high) in enumerate(zip(ORDER[:-1], ORDER[1:], strict=True)):
            below, above = lr[rank <= k], lr[rank > k]
            if len(below) and len(above):
                rows.append({"seed": seed, "boundary": f"{low} | {high}",
                             "lr": float(np.sqrt(below.max() * above.min())),
                             "lr_below": float(below.max()), "lr_above": float(above.min())})
    return pd.DataFrame(rows, columns=["seed", "boundary", "lr", "lr_below", "lr_above"])


def boundary_summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Median and range over seeds of each boundary."""
    if per_seed.empty:
        return pd.DataFrame(columns=["boundary", "n_seeds", "lr_median", "lr_low", "lr_high"])
    return per_seed.groupby("boundary", sort=False)["lr"].agg(
        n_seeds="size", lr_median="median", lr_low="min", lr_high="max").reset_index()

"""The three regimes of training at a fixed effective learning rate (Kodryan et al. 2022,
"Training scale-invariant neural networks on the sphere can happen in three regimes").

With every trained weight scale-invariant and projected to unit norm after each step
(scale_invariant=True, update=projection), the effective learning rate is lr itself, held
fixed. Each run is classified from its own train-loss and train-error trajectory by the rule
below (fixed before any regimes sweep ran); a boundary between two regimes is, per seed, the
geometric mean of the largest lr in the lower regime and the smallest lr in the higher one.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

CONVERGENCE, EQUILIBRIUM, DIVERGENCE, UNDECIDED = (
    "convergence", "chaotic equilibrium", "divergence", "undecided")
ORDER = (CONVERGENCE, EQUILIBRIUM, DIVERGENCE)  # as the effective learning rate grows
LAST = 3  # epochs averaged at the end of a run ...
PLATEAU_DRIFT = 0.10  # ... and |ln(last LAST / the LAST before)| of the train loss at a plateau
LOSS_FLOOR = 0.05  # mean train loss of the last epochs at or below this: convergence
CHANCE_TRAIN_ERROR = 0.87  # mean train error at or above this (chance 0.9 less 0.03): divergence

TEXT = (
    f"**Regimes** (a run of the scale-invariant network with the projection update, whose "
    f"effective learning rate is lr). From its last {LAST} epochs: **divergence** when it "
    f"diverged or its mean train error is >= {CHANCE_TRAIN_ERROR:g} (chance 0.9 less 0.03); "
    f"else **convergence** when its mean train loss is <= {LOSS_FLOOR:g}; else **chaotic "
    f"equilibrium** when the train loss has stopped moving: |ln(mean of the last {LAST} / mean"
    f" of the {LAST} before)| <= {PLATEAU_DRIFT:g}; else **undecided** (still descending). A "
    "boundary between two regimes, per seed, is the geometric mean of the largest lr in the "
    "lower regime and the smallest lr in the higher one; it is reported over seeds (median and "
    "range) only when every lr of that seed is decided and the regimes are ordered in lr.")


def classify(train_loss: np.ndarray, train_error: np.ndarray, diverged: bool = False) -> str:
    """The regime of one run from its per-epoch train loss and train error."""
    loss, err = np.asarray(train_loss, float), np.asarray(train_error, float)
    ok = np.isfinite(loss) & np.isfinite(err)
    loss, err = loss[ok], err[ok]
    if diverged or not len(loss) or err[-LAST:].mean() >= CHANCE_TRAIN_ERROR:
        return DIVERGENCE
    end = loss[-LAST:].mean()
    if end <= LOSS_FLOOR:
        return CONVERGENCE
    if len(loss) >= 2 * LAST and abs(np.log(end / loss[-2 * LAST:-LAST].mean())) <= PLATEAU_DRIFT:
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

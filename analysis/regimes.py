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
from dataclasses import dataclass

import numpy as np
import pandas as pd

from l2bn.schema import CONV_LAYERS, layer_column

from .outcome import last_evals

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


# --- The regimes study of a results folder ---------------------------------------------------

RUN_COLUMNS = ["trial_id", "seed", "lr", "regime", "train_loss_end", "train_error_end",
               "test_error", "eff_lr_low", "eff_lr", "eff_lr_high", "epochs_run"]
L2_COLUMNS = ["trial_id", "seed", "lr", "l2", "product", "relaxations", "regime", *RUN_COLUMNS[4:7],
              "eff_lr_low", "eff_lr", "eff_lr_high", "rate_regime", "projection_train_loss",
              "projection_test_error"]


@dataclass
class Study:
    """The regimes study: projection runs classified, boundaries, and the L2 arm's rates."""

    runs: pd.DataFrame  # one row per projection run (RUN_COLUMNS)
    per_seed: pd.DataFrame  # boundaries per seed
    summary: pd.DataFrame  # boundary_summary, plus the bracket over seeds
    l2_arm: pd.DataFrame  # one row per L2 run of the same network (L2_COLUMNS)

    @property
    def empty(self) -> bool:
        return self.runs.empty


def _trajectory_row(h: pd.DataFrame) -> dict:
    """Window means of one run's history (sorted by epoch) and its measured effective rates:
    the window mean of each conv layer's lr/||w||^2, then min, geometric mean and max over layers."""
    h = h.sort_values("epoch")
    w = window(len(h))
    tail = h.tail(w)
    rates = [tail[c].astype(float).mean() for c in (layer_column(n, "eff_lr") for n in CONV_LAYERS)
             if c in tail]
    rates = np.asarray([r for r in rates if np.isfinite(r) and r > 0])
    diverged = bool(h.get("diverged", pd.Series(False)).fillna(False).astype(bool).any())
    return {"regime": classify(h["train_loss"], h["train_error"], diverged),
            "train_loss_end": float(tail["train_loss"].astype(float).mean()),
            "train_error_end": float(tail["train_error"].astype(float).mean()),
            "eff_lr_low": float(rates.min()) if rates.size else np.nan,
            "eff_lr": float(np.exp(np.log(rates).mean())) if rates.size else np.nan,
            "eff_lr_high": float(rates.max()) if rates.size else np.nan,
            "epochs_run": int(h["epoch"].max())}


def _runs(trials: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """One row per trial of `trials`: its config, window means, regime and test outcome."""
    tests = last_evals(history, LAST).set_index("trial_id")["test_outcome"]
    rows, by_trial = [], dict(tuple(history.groupby("trial_id", sort=False)))
    for t in trials.itertuples():
        h = by_trial.get(t.trial_id)
        if h is None:
            continue
        rows.append({"trial_id": t.trial_id, "seed": int(t.seed), "lr": float(t.lr),
                     "l2": float(t.l2), "test_error": float(tests.get(t.trial_id, np.nan)),
                     **_trajectory_row(h)})
    return pd.DataFrame(rows)


def rate_regime(rate: float, summary: pd.DataFrame) -> str:
    """The regime the projection runs show at a fixed effective rate: below the median
    convergence|equilibrium boundary, between the two, or above the equilibrium|divergence one
    ("" when a needed boundary was not located)."""
    b = dict(zip(summary["boundary"], summary["lr_median"], strict=True)) if len(summary) else {}
    first, second = (f"{a} | {c}" for a, c in zip(ORDER[:-1], ORDER[1:], strict=True))
    if not np.isfinite(rate):
        return ""
    if first in b and rate < b[first]:
        return CONVERGENCE
    if second in b and rate >= b[second]:
        return DIVERGENCE
    return EQUILIBRIUM if first in b and second in b else ""


def at_rate(rates: np.ndarray, curve: pd.Series) -> np.ndarray:
    """The projection runs' seed-mean `curve` (indexed by lr) at each fixed rate, linear in
    log lr between the two nearest lr; NaN outside the swept range."""
    x = np.log(curve.index.to_numpy(float))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.interp(np.log(rates), x, curve.to_numpy(float), left=np.nan, right=np.nan)


def study(trials: pd.DataFrame, history: pd.DataFrame) -> Study:
    """The regimes study of the fully scale-invariant SGD runs in a results folder: projection
    runs are the fixed-rate sweep, update=l2 runs (l2 > 0) its L2 arm."""
    si = trials[trials["scale_invariant"].fillna(False).astype(bool)
                & (trials["optimizer"] == "sgd") & (trials["norm"] != "none")] \
        if "scale_invariant" in trials else trials.iloc[:0]
    proj = _runs(si[si["update"] == "projection"], history)
    if proj.empty:
        empty = pd.DataFrame()
        return Study(pd.DataFrame(columns=RUN_COLUMNS), empty, empty, pd.DataFrame(columns=L2_COLUMNS))
    proj = proj.sort_values(["seed", "lr"]).reset_index(drop=True)
    per_seed = boundaries(proj)
    summary = boundary_summary(per_seed)
    if len(summary):
        bracket = per_seed.groupby("boundary", sort=False).agg(
            bracket_low=("lr_below", "min"), bracket_high=("lr_above", "max")).reset_index()
        summary = summary.merge(bracket, on="boundary")
    arm = _runs(si[(si["update"] == "l2") & (si["l2"] > 0)], history)
    if len(arm):
        arm["product"] = arm["lr"] * arm["l2"]
        steps = history.groupby("trial_id")["step"].max()
        # relaxation time 1/(2*lr*l2) steps for SGD (docs/theory.md#relaxation-times)
        arm["relaxations"] = arm["trial_id"].map(steps).astype(float) * 2 * arm["product"]
        arm["rate_regime"] = [rate_regime(r, summary) for r in arm["eff_lr"]]
        curve = proj.groupby("lr")[["train_loss_end", "test_error"]].mean()
        for column, name in (("train_loss_end", "projection_train_loss"),
                             ("test_error", "projection_test_error")):
            arm[name] = at_rate(arm["eff_lr"].to_numpy(float), curve[column])
        arm = arm.sort_values(["product", "seed"]).reset_index(drop=True)[L2_COLUMNS]
    else:
        arm = pd.DataFrame(columns=L2_COLUMNS)
    return Study(proj[RUN_COLUMNS], per_seed, summary, arm)


def to_dict(s: Study) -> dict:
    """regimes.json's content (floats as Python floats; NaN as None)."""
    def records(frame: pd.DataFrame) -> list[dict]:
        return [{k: (None if isinstance(v, float) and not np.isfinite(v) else
                     v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                for r in frame.to_dict("records")]
    return {"rule_version": RULE_VERSION, "rule": TEXT, "runs": records(s.runs),
            "boundaries_per_seed": records(s.per_seed), "boundaries": records(s.summary),
            "l2_arm": records(s.l2_arm)}

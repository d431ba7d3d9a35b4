"""The outcome a check judges, per trial: the mean of its last k evaluations (rules "3").

One final-epoch evaluation is noisy: in v2 one trial's test error moved 0.032 RMS between
epochs 3 and 4, more than the seed-to-seed SD. Averaging the last evaluations (each on the
full test set in v3's grids) gives a stable outcome; rules version "2" used the final one.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = {"test_error": "test_outcome", "train_loss": "train_outcome"}


def last_evals(history: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per trial_id: the mean of test_error and of train_loss over its last k non-diverged
    epochs with a finite test error (fewer when it ran fewer), and n_evals, how many."""
    cols = ["trial_id", *COLUMNS.values(), "n_evals"]
    if history.empty or "test_error" not in history:
        return pd.DataFrame(columns=cols)
    h = history[np.isfinite(history["test_error"].astype(float))]
    if "diverged" in h:
        h = h[~h["diverged"].fillna(False).astype(bool)]
    last = h.sort_values(["trial_id", "epoch"]).groupby("trial_id").tail(k)
    out = last.groupby("trial_id").agg(
        **{new: (old, "mean") for old, new in COLUMNS.items()}, n_evals=("epoch", "size"))
    return out.reset_index()[cols]

"""Equilibrium: do the used points sit at the angular update the theory predicts?
(docs/theory.md#equilibrium-table)"""
from __future__ import annotations

import numpy as np
import pandas as pd

BALANCE_BAND = (2 / 3, 3 / 2)

TEXT = (
    "**Equilibrium balance** (update=l2 cells with a normalization). For the premise's used "
    "points, the norm balance per conv layer = (measured/predicted angular update)^k at the "
    "last epoch, k = 2 (sgd, momentum, adamw) or 3 (adam with coupled L2): the ratio of the "
    "update's growth of ||w||^2 to L2's shrinkage in the theory's balance (1 at the predicted "
    "equilibrium), averaged over conv layers and seeds. PASS when the median over the used "
    f"points lies in [{BALANCE_BAND[0]:.3g}, {BALANCE_BAND[1]:.3g}], FAIL otherwise (a "
    "descriptive band, not a test: no p-value enters the family); the premise's verdict when it"
    " stops the cell. The angular update is the whole layer's (all groups flattened), RMS over"
    " the epoch's steps.")


def measure(used: pd.DataFrame) -> dict:
    """Median, quartiles of the norm balance and the median angle ratio over the used points."""
    b = used["balance"].dropna()
    q = (lambda v: float(b.quantile(v))) if len(b) else (lambda v: np.nan)
    return {"n_points": len(b), "balance_median": q(0.5), "balance_q25": q(0.25),
            "balance_q75": q(0.75),
            "ratio_median": float(used["ang_ratio"].median()) if len(b) else np.nan}


def decide(row: dict) -> tuple[str, str]:
    """PASS/FAIL by the band, INSUFFICIENT without a measured balance."""
    lo, hi = BALANCE_BAND
    median = row["balance_median"]
    if not np.isfinite(median):
        return "INSUFFICIENT", "no used point with a measured and predicted angular update"
    inside = lo <= median <= hi
    return ("PASS" if inside else "FAIL"), (
        f"median balance {median:.3f} {'inside' if inside else 'outside'} [{lo:.3g}, {hi:.3g}]")

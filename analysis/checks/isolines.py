"""The iso-line test: along each diagonal lr^(1/s)*l2 = const the outcome should not change
with lr, while across diagonals it does (docs/theory.md#iso-lines).

Observations are the seeds of the cell's used points. One linear model (statsmodels OLS): a
mean per diagonal plus one common slope in log2(lr). The along effect is that slope times the
mean log2-lr span of a diagonal: the change of test error from one end of a diagonal to the
other. "No change" is an equivalence claim against EQUIV_MARGIN; "the diagonals differ" is
the F-test of the diagonal means given the slope.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import statsmodels.api as sm

from .inference import equivalence

ISO_RTOL = 1e-6  # products lr^(1/s)*l2 that agree to this (relative) share a diagonal
ISO_MIN_LR = 2  # a diagonal needs this many distinct lr
ISO_MIN_DIAGONALS = 2  # the test needs this many diagonals
# In test-error units: about the seed-to-seed SD of one trial's outcome in the CPU-scale
# studies (pooled 0.018 in results/v3, median per point 0.012), so an effect inside it is
# one a single run cannot show.
EQUIV_MARGIN = 0.02
ALPHA = 0.05

TEXT = (
    f"**Iso-lines.** Points whose lr^(1/s)*l2 (s the theory's slope) agree to {ISO_RTOL:g} "
    f"lie on one diagonal; diagonals with >= {ISO_MIN_LR} distinct lr count, and the test "
    f"needs >= {ISO_MIN_DIAGONALS}. Model (ordinary least squares on the seeds of the used "
    "points): one mean per diagonal + one common slope in log2(lr). Along effect = that slope"
    " x the mean log2(lr) span of a diagonal (test-error change from one end of a diagonal to "
    f"the other); it is tested for equivalence with 0 within +-{EQUIV_MARGIN:g} (two one-sided "
    "t-tests) and for lying outside that margin; across = F-test of the diagonal means given "
    "the slope. Needs >= 2 seeds at the median point. Verdict from Holm-adjusted p-values: "
    "FAIL when the along effect is "
    f"significantly outside +-{EQUIV_MARGIN:g}; PASS when it is significantly inside and the "
    "diagonals differ; INSUFFICIENT otherwise or under the premise's chance guard. The margin"
    " is about one trial's seed-to-seed SD in the CPU-scale studies (pooled 0.018 in "
    "results/v3).")


def diagonal_ids(lr: np.ndarray, l2: np.ndarray, s: float) -> np.ndarray:
    """Index of each point's diagonal: products lr^(1/s)*l2 equal to ISO_RTOL share one."""
    log_p = np.log(lr) / s + np.log(l2)
    order = np.argsort(log_p, kind="stable")
    ids = np.empty(len(lr), dtype=int)
    current, prev = -1, -np.inf
    for i in order:
        if log_p[i] - prev > ISO_RTOL:
            current += 1
        ids[i], prev = current, log_p[i]
    return ids


def measure(points: pd.DataFrame, s: float) -> dict:
    """The iso-line statistics and raw p-values of a cell's used points (columns lr, l2,
    errors: each point's per-seed outcomes)."""
    diag = diagonal_ids(points["lr"].to_numpy(float), points["l2"].to_numpy(float), s)
    lrs = points.groupby(diag)["lr"].nunique()
    keep = np.isin(diag, lrs[lrs >= ISO_MIN_LR].index)
    p, diag = points[keep], diag[keep]
    row = {"n_diagonals": int(len(np.unique(diag))), "n_iso_points": int(len(p)),
           "iso_products": sorted({float(f"{v:.6g}") for v in p["lr"] ** (1 / s) * p["l2"]})}
    if row["n_diagonals"] < ISO_MIN_DIAGONALS:
        return row | {"iso_stop": f"{row['n_diagonals']} diagonals with >= {ISO_MIN_LR} "
                      f"distinct lr; need >= {ISO_MIN_DIAGONALS}"}
    n = p["errors"].map(len).to_numpy()
    if np.median(n) < 2:
        return row | {"iso_stop": "one seed per point: no seed noise to test against"}
    y = np.concatenate(list(p["errors"]))
    groups, x = np.repeat(diag, n), np.repeat(np.log2(p["lr"].to_numpy(float)), n)
    dummies = pd.get_dummies(groups).to_numpy(float)
    full = sm.OLS(y, np.column_stack([dummies, x])).fit()
    if full.df_resid <= 0 or full.mse_resid <= 0:
        return row | {"iso_stop": "no residual degrees of freedom (too few seeds or points)"}
    reduced = sm.OLS(y, sm.add_constant(x)).fit()
    f_across, p_across, _ = full.compare_f_test(reduced)
    span = float(pd.Series(x).groupby(groups).agg(lambda v: v.max() - v.min()).mean())
    slope, se = float(full.params[-1]), float(full.bse[-1])
    eq = equivalence(slope * span, se * span, full.df_resid, EQUIV_MARGIN, ALPHA)
    means = pd.Series(y).groupby(groups).mean()
    return row | {"iso_slope": slope, "iso_slope_se": se, "iso_span": span,
                  "iso_along": eq.effect, "iso_along_low": eq.ci_low, "iso_along_high": eq.ci_high,
                  "iso_df": float(full.df_resid), "iso_p_equiv": eq.p_equiv, "iso_p_out": eq.p_out,
                  "iso_across_p": float(p_across), "iso_across": float(means.max() - means.min())}


def decide(row: dict) -> tuple[str, str]:
    """The iso-line verdict and its reason from measure()'s row with Holm-adjusted p-values
    (iso_p_equiv_adj, iso_p_out_adj, iso_across_p_adj)."""
    if "iso_stop" in row:
        return "INSUFFICIENT", row["iso_stop"]
    along = (f"along {row['iso_along']:+.4f} (90% CI [{row['iso_along_low']:+.4f}, "
             f"{row['iso_along_high']:+.4f}]; {row['iso_slope']:+.4f} per doubling of lr) "
             f"against +-{EQUIV_MARGIN:g}")
    p_in, p_out, p_across = row["iso_p_equiv_adj"], row["iso_p_out_adj"], row["iso_across_p_adj"]
    if p_out < ALPHA:
        return "FAIL", f"{along}: significantly outside, adjusted p = {p_out:.2g}"
    if p_in < ALPHA and p_across < ALPHA:
        return "PASS", (f"{along}: equivalent, adjusted p = {p_in:.2g}; across diagonals "
                        f"adjusted p = {p_across:.2g}")
    return "INSUFFICIENT", (f"{along}: equivalence adjusted p = {p_in:.2g}, outside p = "
                            f"{p_out:.2g}; across diagonals adjusted p = {p_across:.2g}")

"""Projection: with the weights projected to unit norm after each step, is test error flat
in l2 below the large-l2 regime (docs/theory.md#projection)?

Observations are the seeds of the cell's points. One linear model (statsmodels OLS): a mean
per lr plus one common slope in log2(l2). The l2 effect is that slope times the log2 span of
the cell's l2 values: the test-error change across the design's l2 range at fixed lr. "Flat"
is an equivalence claim against the iso-line test's margin.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import statsmodels.api as sm

from .inference import equivalence
from .isolines import EQUIV_MARGIN

ALPHA = 0.05

TEXT = (
    "**Projection flatness** (update=projection cells). Points with l2 > 0 (the effect is a "
    "slope in log2(l2)) below the large-l2 regime: "
    "2*l2 above the median measured per-unit gradient norm at unit weight norm (conv layers, "
    "last epoch), i.e. where L2's gradient outweighs the loss's (or l2 > --large-l2, an "
    "exploration). Model (ordinary least squares on the seeds): one mean per lr + one common "
    "slope in log2(l2). l2 effect = that slope x the log2 span of the cell's l2 values (the "
    f"test-error change across the design's l2 range at fixed lr), tested for equivalence with"
    f" 0 within +-{EQUIV_MARGIN:g} (the iso-line margin; two one-sided t-tests) and for lying "
    "outside it. Verdict from Holm-adjusted p-values: FAIL when significantly outside, PASS "
    "when significantly inside, INSUFFICIENT otherwise or with fewer than 2 distinct lr or l2 "
    "values. The lr effect (F-test of the lr means given the l2 slope) is shown, not judged.")


def measure(p: pd.DataFrame) -> dict:
    """The l2 effect and raw p-values of a projection cell's points below the large-l2 regime."""
    n = p["errors"].map(len).to_numpy()
    y = np.concatenate(list(p["errors"]))
    lr = np.repeat(p["lr"].to_numpy(float), n)
    x = np.repeat(np.log2(p["l2"].to_numpy(float)), n)
    dummies = pd.get_dummies(lr).to_numpy(float)
    full = sm.OLS(y, np.column_stack([dummies, x])).fit()
    if full.df_resid <= 0 or full.mse_resid <= 0:
        return {"l2_stop": "no residual degrees of freedom (too few points or seeds)"}
    _, lr_p, _ = full.compare_f_test(sm.OLS(y, sm.add_constant(x)).fit())
    span = float(x.max() - x.min())
    slope, se = float(full.params[-1]), float(full.bse[-1])
    eq = equivalence(slope * span, se * span, full.df_resid, EQUIV_MARGIN, ALPHA)
    return {"l2_effect": eq.effect, "l2_effect_low": eq.ci_low, "l2_effect_high": eq.ci_high,
            "l2_slope": slope, "l2_slope_se": se, "l2_df": float(full.df_resid),
            "l2_p_equiv": eq.p_equiv, "l2_p_out": eq.p_out, "lr_p": float(lr_p)}


def decide(row: dict) -> tuple[str, str]:
    """The projection verdict and its reason from measure()'s row with Holm-adjusted p-values
    (l2_p_equiv_adj, l2_p_out_adj)."""
    if "l2_stop" in row:
        return "INSUFFICIENT", row["l2_stop"]
    effect = (f"l2 effect {row['l2_effect']:+.4f} (90% CI [{row['l2_effect_low']:+.4f}, "
              f"{row['l2_effect_high']:+.4f}]) against +-{EQUIV_MARGIN:g}")
    p_in, p_out = row["l2_p_equiv_adj"], row["l2_p_out_adj"]
    if p_out < ALPHA:
        return "FAIL", f"{effect}: significantly outside, adjusted p = {p_out:.2g}"
    if p_in < ALPHA:
        return "PASS", f"{effect}: flat, adjusted p = {p_in:.2g} (lr effect p = {row['lr_p']:.2g})"
    return "INSUFFICIENT", f"{effect}: equivalence adjusted p = {p_in:.2g}, outside p = {p_out:.2g}"

"""Tests shared by the checks: equivalence (TOST), F tails, Holm.

Distributions come from scipy.stats and the Holm adjustment from statsmodels; what is left
here is the arithmetic that turns an effect and its standard error into the two p-values every
"no effect" claim needs (Schuirmann 1987, "A comparison of the two one-sided tests procedure
and the power approach for assessing the equivalence of average bioavailability").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests


@dataclass(frozen=True)
class Equivalence:
    """An effect against a margin: p_equiv small -> inside (+-margin), p_out small -> outside."""

    effect: float
    se: float
    df: float
    margin: float
    p_equiv: float  # TOST: max of the two one-sided p-values of H0 |effect| >= margin
    p_out: float  # H0 |effect| <= margin, Bonferroni over its two sides
    ci_low: float  # the 1 - 2*alpha interval TOST's verdict corresponds to
    ci_high: float


def equivalence(effect: float, se: float, df: float, margin: float,
                alpha: float = 0.05) -> Equivalence:
    """Two one-sided tests of an estimate with a t(df) sampling distribution against +-margin."""
    if not (np.isfinite(effect) and np.isfinite(se) and se > 0 and df > 0):
        nan = float("nan")
        return Equivalence(effect, se, df, margin, nan, nan, nan, nan)
    return equivalence_from_roots((effect + margin) / se, (effect - margin) / se, df,
                                  margin, effect, se, alpha)


def equivalence_from_roots(r_low: float, r_high: float, df: float, margin: float,
                           effect: float = float("nan"), se: float = float("nan"),
                           alpha: float = 0.05) -> Equivalence:
    """The same tests from signed roots at the two margin edges, r = (estimate - edge)/se or
    a profile likelihood's signed root (Bates & Watts 1988, section 6.1)."""
    p_above_low = float(stats.t.sf(r_low, df))  # H0: effect <= -margin
    p_below_high = float(stats.t.cdf(r_high, df))  # H0: effect >= +margin
    p_out = min(1.0, 2 * min(float(stats.t.cdf(r_low, df)), float(stats.t.sf(r_high, df))))
    q = float(stats.t.ppf(1 - alpha, df))
    low, high = (effect - q * se, effect + q * se) if np.isfinite(se) else (np.nan, np.nan)
    return Equivalence(effect, se, df, margin, max(p_above_low, p_below_high), p_out,
                       float(low), float(high))


def f_sf(f: float, d1: float, d2: float) -> float:
    """P(F > f) for F with (d1, d2) degrees of freedom; NaN when undefined."""
    if not (np.isfinite(f) and d1 > 0 and d2 > 0):
        return float("nan")
    return float(stats.f.sf(max(f, 0.0), d1, d2))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (Holm 1979) of the finite p-values; NaN stays NaN."""
    p = np.asarray(p_values, float)
    out = np.full(len(p), np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(p[finite], method="holm")[1]
    return out.tolist()

"""F-tests against seed noise: the collapse's lack of fit and projection's l2 effect.

Numpy only (no scipy): the F distribution's tail is the regularized incomplete beta function,
evaluated by its continued fraction (Numerical Recipes, 3rd ed., section 6.4).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def f_sf(f: float, d1: float, d2: float) -> float:
    """P(F > f) for F with (d1, d2) degrees of freedom; NaN when undefined."""
    if not (np.isfinite(f) and d1 > 0 and d2 > 0):
        return float("nan")
    if f <= 0:
        return 1.0
    return betainc(d2 / 2.0, d1 / 2.0, d2 / (d2 + d1 * f))


@dataclass(frozen=True)
class FTest:
    """An F-test: statistic, degrees of freedom, p-value, and what it compared."""

    f: float
    df1: int
    df2: int
    p: float
    test: str


def nested_f(sse_small: float, df_small: int, sse_big: float, df_big: int, test: str) -> FTest:
    """F-test of a small model (residual SS, residual dof) nested in a big one."""
    df1 = df_small - df_big
    if df1 <= 0 or df_big <= 0 or sse_big <= 0:
        return FTest(float("nan"), df1, df_big, float("nan"), test)
    f = max(sse_small - sse_big, 0.0) / df1 / (sse_big / df_big)
    return FTest(f, df1, df_big, f_sf(f, df1, df_big), test)


def lack_of_fit(errors: list[np.ndarray], fitted: np.ndarray, n_params: int) -> FTest:
    """Lack of fit of a model of the point means (fitted, n_params parameters) against the
    seed-to-seed noise: F = (sum_i n_i (mean_i - fitted_i)^2 / (m - p)) / (pure error / (N - m))."""
    n = np.array([len(e) for e in errors])
    means = np.array([e.mean() for e in errors])
    ss_lof = float((n * (means - fitted) ** 2).sum())
    ss_pe = float(sum(((e - e.mean()) ** 2).sum() for e in errors))
    m, total = len(errors), int(n.sum())
    return nested_f(ss_lof + ss_pe, total - n_params, ss_pe, total - m,
                    "lack of fit vs seeds")


def sse(y: np.ndarray, *factors: np.ndarray, covariate: np.ndarray | None = None) -> tuple[float, int]:
    """Residual SS and dof of the additive least-squares model y ~ factor_1 + ... (dummies),
    plus one common slope in `covariate` if given."""
    cols = [np.ones(len(y))]
    for f in factors:
        levels = np.unique(f)
        cols += [(f == v).astype(float) for v in levels[1:]]
    if covariate is not None:
        cols.append(np.asarray(covariate, float))
    X = np.stack(cols, axis=1)
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    rank = np.linalg.matrix_rank(X)
    return float(((y - X @ beta) ** 2).sum()), len(y) - rank


@dataclass(frozen=True)
class EffectTests:
    """The l2 and lr effects on test error in a two-way layout, each against noise."""

    l2: FTest
    lr: FTest
    l2_effect_rms: float  # RMS over trials of the fitted l2 contribution (test-error units)
    replicated: bool


def two_way(y: np.ndarray, lr: np.ndarray, l2: np.ndarray) -> EffectTests:
    """Replicated (some point has >= 2 seeds): does error depend on l2 at all (main effect and
    interaction with lr) beyond the seed noise, i.e. lr-only model vs free point means? And lr
    likewise. Unreplicated: the l2 (lr) main effect against the lr x l2 interaction, the
    classical two-way ANOVA without replicates (additive model)."""
    point = np.unique(np.stack([lr, l2], 1), axis=0, return_inverse=True)[1].ravel()
    replicated = len(np.unique(point)) < len(y)
    sse_lr, df_lr = sse(y, lr)
    sse_l2, df_l2 = sse(y, l2)
    if replicated:
        sse_big, df_big = sse(y, point)
        label = "vs seeds"
    else:
        sse_big, df_big = sse(y, lr, l2)
        label = "vs lr x l2 interaction (1 seed)"
    l2_test = nested_f(sse_lr, df_lr, sse_big, df_big, f"l2 effect {label}")
    lr_test = nested_f(sse_l2, df_l2, sse_big, df_big, f"lr effect {label}")
    rms = math.sqrt(max(sse_lr - sse_big, 0.0) / len(y))
    return EffectTests(l2_test, lr_test, rms, replicated)

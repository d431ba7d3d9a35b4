"""The iso-line slope fit: test error as a smooth function of x = log(lr) + s*log(l2).

For every s on a grid, a cubic regression spline in x is fitted by least squares to the
per-point mean test errors; s is the R^2 maximiser, refined by a parabola through the grid
maximum and its neighbours. The design matrix depends on s but not on the errors, so all
bootstrap replicates are fitted at once per s (one linear solve with many right-hand sides).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

S_GRID = np.round(np.linspace(-1.0, 3.0, 401), 10)  # step 0.01; theory's s is 1/2 or 1
MAX_DOF = 6  # cubic with two interior knots
POINTS_PER_DOF = 3
RIDGE = 1e-10  # relative; keeps rank-deficient fits (few distinct x) well defined
CI_LEVEL = 0.95


@dataclass(frozen=True)
class SlopeFit:
    """Fitted s with its bootstrap interval, and R^2 of the 1-D, lr-only and l2-only models."""

    s: float
    ci_low: float
    ci_high: float
    r2_1d: float
    r2_lr: float
    r2_l2: float
    dof: int  # spline coefficients (the 1-D model has one more parameter: s)
    bootstrap: str  # "seeds" or "residuals" (see bootstrap_errors)


def spline_basis(x: np.ndarray, dof: int) -> np.ndarray:
    """(n, dof) truncated-power cubic spline basis of standardized x, knots evenly spaced."""
    sd = x.std()
    if sd == 0:
        return np.ones((len(x), 1))
    z = (x - x.mean()) / sd
    powers = [z**k for k in range(min(dof, 4))]
    n_knots = max(dof - 4, 0)
    knots = z.min() + (z.max() - z.min()) * np.arange(1, n_knots + 1) / (n_knots + 1)
    return np.stack(powers + [np.clip(z - k, 0, None) ** 3 for k in knots], axis=1)


def smooth(x: np.ndarray, Y: np.ndarray, dof: int) -> np.ndarray:
    """Least-squares spline fit in x of every row of Y (B, n): the fitted values (B, n)."""
    X = spline_basis(x, dof)
    A = X.T @ X
    A += RIDGE * np.trace(A) / len(A) * np.eye(len(A))
    return (X @ np.linalg.solve(A, X.T @ Y.T)).T


def r2_rows(x: np.ndarray, Y: np.ndarray, dof: int) -> np.ndarray:
    """R^2 of the spline in x for every row of Y (B, n)."""
    sse = ((Y - smooth(x, Y, dof)) ** 2).sum(1)
    sst = ((Y - Y.mean(1, keepdims=True)) ** 2).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sst > 1e-18, 1.0 - sse / sst, np.nan)


def spline_dof(log_lr: np.ndarray, log_l2: np.ndarray) -> int:
    """MAX_DOF, capped at a third of the points (a flexible curve through few points fits
    any s) and by the fewest distinct x values over the s grid (s = 0 aside), so that every
    fitted model has full rank and R^2(s) has no jumps."""
    distinct = min(len(np.unique(np.round(log_lr + s * log_l2, 9))) for s in S_GRID if s != 0)
    return int(max(2, min(MAX_DOF, distinct, len(log_lr) // POINTS_PER_DOF)))


def argmax_refined(curves: np.ndarray) -> np.ndarray:
    """Per column of curves (S, B): the grid argmax, moved to the vertex of the parabola
    through it and its neighbours (at most half a grid step)."""
    filled = np.where(np.isnan(curves), -np.inf, curves)
    k = filled.argmax(0)
    s = S_GRID[k].astype(float)
    inner = (k > 0) & (k < len(S_GRID) - 1)
    cols = np.nonzero(inner)[0]
    left, mid, right = (filled[k[cols] + d, cols] for d in (-1, 0, 1))
    curv = left - 2 * mid + right
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(curv < 0, 0.5 * (left - right) / curv, 0.0)
    step = S_GRID[1] - S_GRID[0]
    s[cols] += step * np.clip(np.nan_to_num(shift), -0.5, 0.5)
    s[np.all(np.isnan(curves), axis=0)] = np.nan
    return s


def bootstrap_errors(errors: list[np.ndarray], fitted: np.ndarray, dof: int, n_boot: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """(Y, mode): n_boot replicates (n_boot, n) of the per-point mean errors.

    "seeds" (the median point has two or more seeds): each point's k seeds are redrawn from
    the cell's pooled within-point deviations e - mean(e), each scaled by sqrt(k/(k-1)) so
    their variance is unbiased, and averaged onto the point's mean. Resampling each point's
    own 2-3 seeds gives too narrow an interval (simulated coverage of a 95% interval 0.85-0.92
    with 2-3 seeds, against 0.91-0.95 pooled).
    "residuals" (single seeds): the fitted 1-D model plus its residuals resampled, scaled by
    sqrt(n/(n - dof - 1)) for the fitted coefficients and s.
    """
    n = len(errors)
    if np.median([len(e) for e in errors]) >= 2:
        deviations = np.concatenate([np.sqrt(len(e) / (len(e) - 1)) * (e - e.mean())
                                     for e in errors if len(e) > 1])
        Y = np.empty((n_boot, n))
        for i, e in enumerate(errors):
            Y[:, i] = e.mean() + deviations[rng.integers(0, len(deviations),
                                                         (n_boot, len(e)))].mean(1)
        return Y, "seeds"
    means = np.array([e.mean() for e in errors])
    resid = (means - fitted) * np.sqrt(n / max(n - dof - 1, 1))
    return fitted + resid[rng.integers(0, n, (n_boot, n))], "residuals"


def fit_slope(lr: np.ndarray, l2: np.ndarray, errors: list[np.ndarray], n_boot: int,
              rng: np.random.Generator) -> SlopeFit:
    """Fit s for points (lr, l2) with per-seed errors; bootstrap interval at CI_LEVEL."""
    log_lr, log_l2 = np.log(lr), np.log(l2)
    y = np.array([e.mean() for e in errors])[None]
    dof = spline_dof(log_lr, log_l2)
    s_hat = argmax_refined(np.stack([r2_rows(log_lr + s * log_l2, y, dof) for s in S_GRID]))[0]
    if np.isnan(s_hat):  # constant errors: nothing to explain
        return SlopeFit(*[np.nan] * 6, dof, "none")
    x_hat = log_lr + s_hat * log_l2
    Y, mode = bootstrap_errors(errors, smooth(x_hat, y, dof)[0], dof, n_boot, rng)
    boot = argmax_refined(np.stack([r2_rows(log_lr + s * log_l2, Y, dof) for s in S_GRID]))
    boot = boot[~np.isnan(boot)]
    alpha = 100 * (1 - CI_LEVEL) / 2
    low, high = np.percentile(boot, [alpha, 100 - alpha]) if len(boot) else (np.nan, np.nan)
    return SlopeFit(float(s_hat), float(low), float(high), float(r2_rows(x_hat, y, dof)[0]),
                    float(r2_rows(log_lr, y, dof)[0]), float(r2_rows(log_l2, y, dof)[0]), dof,
                    mode)


def adjusted_r2(r2: float, n: int, k: int) -> float:
    """1 - (1 - R^2)(n - 1)/(n - k): R^2 charged for the model's k parameters."""
    return 1.0 - (1.0 - r2) * (n - 1) / (n - k) if n > k else float("nan")

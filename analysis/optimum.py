"""Where is the best effective learning rate? Per update=l2 cell of an iso-line design.

Every point sits on a diagonal of the theory's invariant product p = lr^(1/s)*l2 (s from
l2bn.theory.iso_slope: lr*l2 for sgd, momentum, adamw; lr^2*l2 for adam). A quadratic in
log(p) fitted to the point means (all lr pooled; a diverged seed counts at chance) has its
vertex at the optimum p* (a vertex beyond the design, or its replicates', is put at the
design's end: the optimum lies at or beyond it). Its interval is a bootstrap over seeds:
each point's seeds redrawn with replacement, N_BOOT replicates, a fixed RNG seed; the Monte
Carlo error of each end is the half-width of the order statistics one binomial SD either side
(in ln p). Per lr the same fit on
that lr's points asks the paper's question: do the minima of the lr curves sit on one
iso-line (their intervals overlap)? Descriptive: no verdict, no p-value in the family.
"""
from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from l2bn import theory

from .checks.isolines import diagonal_ids
from .checks.premise import CHANCE_ERROR

N_BOOT = 2000
CI_LEVEL = 0.95
SEED = 0


def vertex(log_p: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Vertex of the least-squares quadratic in log_p for every row of Y (B, n); NaN where
    the fit is not convex (no minimum) or fewer than 3 distinct products."""
    if len(np.unique(log_p)) < 3:
        return np.full(len(Y), np.nan)
    X = np.column_stack([np.ones_like(log_p), log_p, log_p**2])
    coef = np.linalg.lstsq(X, Y.T, rcond=None)[0]  # (3, B)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = -coef[1] / (2 * coef[2])
    return np.where(coef[2] > 0, v, np.nan)


def seed_outcomes(points: pd.DataFrame) -> list[np.ndarray]:
    """Each point's per-seed outcomes, a diverged seed at chance."""
    return [np.concatenate([e, np.full(int(d), CHANCE_ERROR)])
            for e, d in zip(points["errors"], points["n_diverged"], strict=True)]


def bootstrap_means(seeds: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """(N_BOOT, n) point means with each point's seeds redrawn with replacement."""
    return np.stack([s[rng.integers(0, len(s), (N_BOOT, len(s)))].mean(1) for s in seeds], axis=1)


def interval(boot: np.ndarray) -> tuple[float, float, float, float]:
    """(low, high, Monte Carlo error of low, of high) of the percentile interval; NaN when
    more than half the replicates have no minimum."""
    b = np.sort(boot[np.isfinite(boot)])
    if len(b) < len(boot) / 2:
        return (np.nan,) * 4
    out = []
    for q in ((1 - CI_LEVEL) / 2, (1 + CI_LEVEL) / 2):
        k, sd = q * (len(b) - 1), np.sqrt(len(b) * q * (1 - q))
        lo, hi = b[max(int(k - sd), 0)], b[min(int(np.ceil(k + sd)), len(b) - 1)]
        out.append((float(np.quantile(b, q)), float(hi - lo) / 2))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def cell_optimum(p: pd.DataFrame, rng: np.random.Generator) -> dict:
    """The pooled optimum of one cell and each lr's (products as p, not log)."""
    s = theory.iso_slope(p.iloc[0]["optimizer"])
    log_p = np.log(p["lr"].to_numpy(float) ** (1 / s) * p["l2"].to_numpy(float))
    seeds = seed_outcomes(p)
    means = np.array([x.mean() for x in seeds])
    boot = bootstrap_means(seeds, rng)
    lo_p, hi_p = log_p.min(), log_p.max()  # a vertex beyond the design sits at its end
    v_hat, v_boot = (np.clip(vertex(log_p, y), lo_p, hi_p) for y in (means[None], boot))
    v_hat = v_hat[0]
    low, high, mc_low, mc_high = interval(v_boot)
    by_product = pd.Series(means).groupby(np.round(log_p, 9)).mean()
    best = float(by_product.idxmin())
    row = {"n_products": len(by_product), "p_min": float(np.exp(log_p.min())),
           "p_max": float(np.exp(log_p.max())), "p_best_point": float(np.exp(best)),
           "best_interior": bool(by_product.index.min() < best < by_product.index.max()),
           "p_star": float(np.exp(v_hat)), "p_star_low": float(np.exp(low)),
           "p_star_high": float(np.exp(high)), "mc_err_ln_low": mc_low, "mc_err_ln_high": mc_high}
    row["inside"] = bool(np.isfinite(low) and np.isfinite(high) and lo_p < low and high < hi_p)
    per_lr = {}
    for lr in np.unique(p["lr"]):
        k = p["lr"].to_numpy() == lr
        lo, hi, *_ = interval(np.clip(vertex(log_p[k], boot[:, k]), lo_p, hi_p))
        per_lr[float(lr)] = (float(np.exp(np.clip(vertex(log_p[k], means[k][None])[0], lo_p, hi_p))),
                             float(np.exp(lo)), float(np.exp(hi)))
    lows = [v[1] for v in per_lr.values() if np.isfinite(v[1])]
    highs = [v[2] for v in per_lr.values() if np.isfinite(v[2])]
    row["per_lr"] = [[lr, *v] for lr, v in per_lr.items()]
    row["lr_minima_overlap"] = bool(len(lows) >= 2 and len(lows) == len(per_lr)
                                    and max(lows) <= min(highs))
    return row


def optimum_table(points: pd.DataFrame) -> pd.DataFrame:
    """One row per update=l2 cell whose points lie on >= 3 diagonals."""
    rows = []
    for cell, p in points[(points["update"] == "l2") & (points["l2"] > 0)].groupby("cell", sort=True):
        s = theory.iso_slope(p.iloc[0]["optimizer"])
        if len(np.unique(diagonal_ids(p["lr"].to_numpy(float), p["l2"].to_numpy(float), s))) < 3:
            continue
        rng = np.random.default_rng([SEED, zlib.crc32(cell.encode())])
        rows.append({"cell": cell, "s_theory": s} | cell_optimum(p, rng))
    return pd.DataFrame(rows)

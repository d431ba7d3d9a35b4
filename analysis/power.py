"""Design for power: which effects a grid can decide under protocol 5, before it runs.

Given the seed noise (one trial's outcome SD, from a pilot or a shipped folder) and, for the
collapse slope, how fast the outcome changes across the theory's diagonals, each cell's
linear model on its design (every grid point x its seeds; for the collapse and iso-line tests
only the points forecast to equilibrate, analysis/plan.py, since the premise drops the rest)
gives the standard error of the effect a check judges. A margin can be shown with power
1 - BETA when a true effect of zero (s at the theory's value) is that many standard errors
from it: (t(1 - alpha/m) + t(1 - BETA/2)) x se, with m the family size (Holm's first step,
the worst case). The checks' own margins are in analysis/checks/ (S_MARGIN, EQUIV_MARGIN).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from l2bn import theory
from l2bn.config import TrialConfig

from . import protocol as P
from .checks import isolines, slope

BETA = 0.2  # power 0.8
CELL = ("optimizer", "norm", "update", "l2_scope", "scale_invariant")


def ols_se(X: np.ndarray, sigma: float, column: int) -> tuple[float, float]:
    """(standard error of coefficient `column`, residual dof) of OLS on design X with noise sigma."""
    cov = np.linalg.pinv(X.T @ X)
    return float(sigma * np.sqrt(cov[column, column])), float(len(X) - np.linalg.matrix_rank(X))


def _dummies(values: np.ndarray) -> np.ndarray:
    return (values[:, None] == np.unique(values)[None, :]).astype(float)


def cell_power(p: pd.DataFrame, sigma: float, gain: float, family: int) -> dict:
    """The smallest margins one cell's design decides (rows: one per trial, lr, l2, optimizer)."""
    lr, l2 = p["lr"].to_numpy(float), p["l2"].to_numpy(float)
    s_theory = theory.iso_slope(p.iloc[0]["optimizer"])
    alpha = P.ALPHA / max(family, 1)
    row = {"n_points": len(set(zip(lr, l2, strict=True))), "n_trials": len(p)}
    if p.iloc[0]["update"] == "projection":
        ok = l2 > 0
        x = np.log2(l2[ok])
        se, df = ols_se(np.column_stack([_dummies(lr[ok]), x]), sigma, -1)
        return row | _margin("l2 effect", se * (x.max() - x.min()), df, alpha)
    ok = (l2 > 0) & p["ready"].to_numpy(bool)  # the points the premise is forecast to keep
    lr, l2 = lr[ok], l2[ok]
    row["n_ready"] = len(set(zip(lr, l2, strict=True)))
    if not ok.any():
        return row | _margin("iso along", np.inf, 0, alpha) | _margin("slope", np.inf, 0, alpha)
    diag = isolines.diagonal_ids(lr, l2, s_theory)
    x = np.log2(lr)
    span = float(pd.Series(x).groupby(diag).agg(lambda v: v.max() - v.min()).mean())
    se_iso, df = ols_se(np.column_stack([_dummies(diag), x]), sigma, -1)
    row |= _margin("iso along", se_iso * span, df, alpha) if span > 0 else {}
    # linearized collapse: error = a + g*(ln lr + s*ln l2), g known: s = b_l2 / b_lr
    X = np.column_stack([np.ones(len(lr)), np.log(lr), np.log(l2)])
    cov = np.linalg.pinv(X.T @ X) * sigma**2
    g = gain / np.log(2)  # gain is per doubling of lr at fixed l2: per unit of x / ln 2
    var = cov[2, 2] + s_theory**2 * cov[1, 1] - 2 * s_theory * cov[1, 2]
    se_s = float(np.sqrt(max(var, 0.0)) / abs(g)) if g else np.inf
    return row | _margin("slope", se_s, df, alpha)


def _margin(name: str, se: float, df: float, alpha: float) -> dict:
    """The margin decidable with power 1 - BETA, beside the protocol's own."""
    if df <= 0 or not np.isfinite(se):
        return {f"{name} se": np.nan, f"{name} min margin": np.inf}
    k = stats.t.ppf(1 - alpha, df) + stats.t.ppf(1 - BETA / 2, df)
    return {f"{name} se": se, f"{name} min margin": float(k * se)}


def family_size(configs: list[TrialConfig]) -> int:
    """The number of p-values protocol 5 will adjust together for this grid."""
    cells = {tuple(getattr(c, k) for k in CELL) for c in configs}
    per = {"l2": len(P.FAMILY["collapse"]) + len(P.FAMILY["collapse_train"]),
           "projection": len(P.FAMILY["projection"])}
    return sum(per[cell[2]] for cell in cells)


def power_table(configs: list[TrialConfig], sigma: float, gain: float,
                grad: dict[str, float] | None = None) -> pd.DataFrame:
    """Per cell: the smallest margins its design decides, and whether the protocol's do."""
    from .plan import CELL as PLAN_CELL
    from .plan import forecast_ready, plan_cells

    family = family_size(configs)
    planned = plan_cells(configs, grad)
    planned = planned.set_index(list(PLAN_CELL)) if len(planned) else planned
    frame = pd.DataFrame([{k: getattr(c, k) for k in (*CELL, "lr", "l2", "seed")}
                          | {"ready": forecast_ready(c, grad)} for c in configs])
    rows = []
    for key, p in frame.groupby(list(CELL), sort=True):
        r = dict(zip(CELL, key, strict=True)) | cell_power(p, sigma, gain, family)
        if key[2] == "projection":
            r["decides"] = r["l2 effect min margin"] <= isolines.EQUIV_MARGIN
        else:  # and enough ready points for the collapse spline (analysis.plan)
            r["decides"] = (r.get("iso along min margin", np.inf) <= isolines.EQUIV_MARGIN
                            and r["slope min margin"] <= slope.S_MARGIN
                            and bool(planned.loc[(key[0], key[1], key[3], key[4]), "decidable"]))
        rows.append(r)
    return pd.DataFrame(rows)


def seed_noise(uri: str) -> tuple[float, float]:
    """(pooled seed SD of one trial's outcome, median over collapse cells of the error change
    per doubling of lr at fixed l2, i.e. per unit of x/ln 2) in a results folder."""
    from .collapse import judged_trials, point_table  # only for this option
    from .load import load_results
    points = point_table(judged_trials(load_results(uri)))
    dev = [(e - e.mean()) * np.sqrt(len(e) / (len(e) - 1)) for e in points["errors"] if len(e) > 1]
    sigma = float(np.sqrt(np.mean(np.concatenate(dev) ** 2)))
    gains = []
    for _, p in points[(points["update"] == "l2") & (points["l2"] > 0)].groupby("cell"):
        s = theory.iso_slope(p.iloc[0]["optimizer"])
        z = np.log2(p["lr"].to_numpy(float) ** (1 / s) * p["l2"].to_numpy(float)) * s
        ok = np.isfinite(p["fit_mean"].to_numpy(float))
        if ok.sum() > 2 and np.ptp(z[ok]) > 0:
            gains.append(abs(np.polyfit(z[ok], p["fit_mean"].to_numpy(float)[ok], 1)[0]))
    return sigma, float(np.median(gains)) if gains else float("nan")

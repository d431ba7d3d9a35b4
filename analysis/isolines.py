"""The direct iso-line test (rules "3"): along each diagonal lr^(1/s)*l2 = const, does the
outcome change with lr, while across diagonals it does? (docs/theory.md#iso-lines)

Observations are the seeds of the cell's used points. Against the seed noise (pure error of
the free point means): the along-diagonal test adds one common slope in log2(lr) to a model
of one mean per diagonal; the across-diagonal test compares those means with one grand mean.
A rectangular grid rarely puts two points on one diagonal; iso-line grids
(l2bn/grid.py, `iso: lr`) put all of them there.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import rules as R
from .stats import f_sf, sse


def diagonal_ids(lr: np.ndarray, l2: np.ndarray, s: float) -> np.ndarray:
    """Index of each point's diagonal: products lr^(1/s)*l2 equal to ISO_RTOL share one."""
    log_p = np.log(lr) / s + np.log(l2)
    order = np.argsort(log_p, kind="stable")
    ids = np.empty(len(lr), dtype=int)
    current, prev = -1, -np.inf
    for i in order:
        if log_p[i] - prev > R.ISO_RTOL:
            current += 1
        ids[i], prev = current, log_p[i]
    return ids


def iso_line_test(points: pd.DataFrame, s: float) -> dict:
    """Statistics and verdict of the iso-line test on a cell's used points (columns lr, l2,
    errors: the per-seed outcomes of each point)."""
    diag = diagonal_ids(points["lr"].to_numpy(float), points["l2"].to_numpy(float), s)
    lrs = points.groupby(diag)["lr"].nunique()
    keep = np.isin(diag, lrs[lrs >= R.ISO_MIN_LR].index)
    p, diag = points[keep], diag[keep]
    row = {"n_diagonals": int(len(np.unique(diag))), "n_iso_points": int(len(p)),
           "iso_products": sorted({float(f"{v:.6g}") for v in p["lr"] ** (1 / s) * p["l2"]})}
    if row["n_diagonals"] < R.ISO_MIN_DIAGONALS:
        return row | {"iso_verdict": "INSUFFICIENT", "iso_reason": (
            f"{row['n_diagonals']} diagonals with >= {R.ISO_MIN_LR} distinct lr; need "
            f">= {R.ISO_MIN_DIAGONALS}")}
    n = p["errors"].map(len).to_numpy()
    y = np.concatenate(list(p["errors"]))
    point = np.repeat(np.arange(len(p)), n)
    groups, x = np.repeat(diag, n), np.repeat(np.log2(p["lr"].to_numpy(float)), n)
    df_pe = len(y) - len(p)
    ss_pe = sse(y, point)[0]
    if df_pe <= 0 or ss_pe <= 0:
        return row | {"iso_verdict": "INSUFFICIENT", "iso_reason": "no seed noise to test "
                      "against (one seed per point)"}
    ms_pe = ss_pe / df_pe
    sse_diag, sse_slope = sse(y, groups)[0], sse(y, groups, covariate=x)[0]
    x_within = x - pd.Series(x).groupby(groups).transform("mean").to_numpy()
    slope = float((x_within * y).sum() / (x_within ** 2).sum())
    f_along = (sse_diag - sse_slope) / ms_pe
    n_diag = row["n_diagonals"]
    f_across = (sse(y)[0] - sse_diag) / (n_diag - 1) / ms_pe
    means = pd.Series(y).groupby(groups).mean()
    span = float(pd.Series(x).groupby(groups).agg(lambda v: v.max() - v.min()).mean())
    row |= {"iso_slope": slope, "iso_slope_se": float(np.sqrt(ms_pe / (x_within ** 2).sum())),
            "iso_along_p": f_sf(f_along, 1, df_pe),
            "iso_across_p": f_sf(f_across, n_diag - 1, df_pe),
            "iso_along": abs(slope) * span, "iso_across": float(means.max() - means.min())}
    along = (f"slope along diagonals {slope:+.4f} +- {row['iso_slope_se']:.4f} per doubling of"
             f" lr (p = {row['iso_along_p']:.2g})")
    across = f"across diagonals p = {row['iso_across_p']:.2g}"
    if row["iso_along_p"] < R.ALPHA:
        return row | {"iso_verdict": "FAIL", "iso_reason": f"{along} < {R.ALPHA:g}; {across}"}
    if row["iso_across_p"] < R.ALPHA:
        return row | {"iso_verdict": "PASS", "iso_reason": f"{along}; {across} < {R.ALPHA:g}"}
    return row | {"iso_verdict": "INSUFFICIENT", "iso_reason": (
        f"{along}; {across}: no significant change across diagonals either")}

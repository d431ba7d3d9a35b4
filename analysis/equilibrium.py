"""Has a trial equilibrated? Measured from its own history, per conv layer, over the last epoch.

- norm drift: |ln(||w||_E / ||w||_E-1)| per step x the layer's relaxation time, i.e. how far
  (in ln ||w||) the layer would still move in one relaxation time at its last epoch's pace;
- angle drift: |ln(r_E / r_E-1)| with r = measured / predicted angular update.
The largest over conv layers counts (docs/theory.md#relaxation-times).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from l2bn import theory
from l2bn.schema import CONV_LAYERS, layer_column

from .load import momentum_of


def relaxation_per_layer(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """theory.layer_relaxation_steps per conv layer for each row; Adam's from the row's
    measured unit gradient norm (NaN without one)."""
    out = {layer: np.full(len(rows), np.nan) for layer in CONV_LAYERS}
    for opt, idx in rows.groupby("optimizer").indices.items():
        r = rows.iloc[idx]
        for layer in CONV_LAYERS:
            grad = r.get(layer_column(layer, "grad_norm_unit"), pd.Series(np.nan, r.index))
            out[layer][idx] = theory.layer_relaxation_steps(
                opt, r["lr"].to_numpy(float), r["l2"].to_numpy(float), layer,
                r["width"].to_numpy(float), r["norm"].to_numpy(), grad.to_numpy(float),
                momentum_of(opt))
    return out


def last_epoch_drifts(history: pd.DataFrame) -> pd.DataFrame:
    """Per trial_id: norm_drift and angle_drift (module docstring) between its last two
    measured epochs; NaN with fewer than two, or when the last epoch diverged."""
    cols = ["trial_id", "norm_drift", "angle_drift"]
    if history.empty or "epoch" not in history:
        return pd.DataFrame(columns=cols)
    h = history.sort_values(["trial_id", "epoch"])
    last = h.groupby("trial_id").nth(-1).set_index("trial_id")
    prev = h.groupby("trial_id").nth(-2).set_index("trial_id").reindex(last.index)
    diverged = last.get("diverged", pd.Series(False, last.index)).fillna(False).astype(bool)
    ok = ~diverged.to_numpy() & prev["epoch"].notna().to_numpy()
    steps = (last["step"].astype(float) - prev["step"].astype(float)).to_numpy()
    relax = relaxation_per_layer(last.reset_index())
    norm_d, angle_d = [], []
    for layer in CONV_LAYERS:
        w1 = last.get(layer_column(layer, "w_norm"), pd.Series(np.nan, last.index)).to_numpy(float)
        w0 = prev.get(layer_column(layer, "w_norm"), pd.Series(np.nan, prev.index)).to_numpy(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            norm_d.append(np.abs(np.log(w1 / w0)) / steps * relax[layer])
            r1 = (last.get(layer_column(layer, "angular_update"), np.nan)
                  / last.get(layer_column(layer, "pred_angular_update"), np.nan))
            r0 = (prev.get(layer_column(layer, "angular_update"), np.nan)
                  / prev.get(layer_column(layer, "pred_angular_update"), np.nan))
            angle_d.append(np.abs(np.log(np.asarray(r1, float) / np.asarray(r0, float))))
    norm_drift = _nanmax(np.stack(norm_d))
    angle_drift = _nanmax(np.stack(angle_d))
    return pd.DataFrame({"trial_id": last.index, "norm_drift": np.where(ok, norm_drift, np.nan),
                         "angle_drift": np.where(ok, angle_drift, np.nan)})


def _nanmax(a: np.ndarray) -> np.ndarray:
    """Max over axis 0 ignoring NaN; NaN where all are NaN."""
    filled = np.where(np.isfinite(a), a, -np.inf).max(0)
    return np.where(np.isfinite(filled), filled, np.nan)

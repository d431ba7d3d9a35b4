"""The checks' machine-readable outputs: collapse.json and collapse.csv."""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pandas as pd

from . import protocol as P
from .collapse import Checks, verdict_table
from .load import Results


def _clean(value):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: _clean(v) for k, v in r.items()} for r in df.to_dict("records")]


def to_json(checks: Checks, results: Results) -> str:
    """collapse.json: settings, thresholds, inputs and every statistic (deterministic)."""
    payload = {
        "settings": asdict(checks.settings),
        "protocol": P.PROTOCOL,
        "thresholds": P.thresholds(),
        "inputs": {"n_found": results.n_found, "n_used": len(results.trials),
                   "n_skipped": len(results.skipped),
                   "skipped": [[t, kind] for t, kind, _ in results.skipped]},
        "verdicts": _records(verdict_table(checks)),
        "collapse": _records(checks.collapse),
        "projection": _records(checks.projection),
        "equilibrium": _records(checks.equilibrium_cells),
        "equilibrium_points": _records(checks.equilibrium),
        "sensitivity": _records(checks.sensitivity) if checks.sensitivity is not None else [],
        "cells": _records(checks.cells),
        "collapse_train": _records(checks.collapse_train),
        "family": _records(checks.family),
        "optimum": _records(checks.optimum),
    }
    return json.dumps(_clean_tree(payload), indent=1, sort_keys=True, allow_nan=False)


def _clean_tree(value):
    if isinstance(value, dict):
        return {k: _clean_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_tree(v) for v in value]
    return _clean(value)


def to_csv_frame(checks: Checks) -> pd.DataFrame:
    """collapse.csv: one row per statistic-bearing row of every check, columns united."""
    parts = [checks.collapse.assign(check="collapse"),
             checks.collapse_train.assign(check="collapse_train"),
             checks.projection.assign(check="projection"),
             checks.equilibrium_cells.assign(check="equilibrium"),
             checks.equilibrium.assign(check="equilibrium_point")]
    frame = pd.concat([p for p in parts if len(p)], ignore_index=True)
    for col in ("excluded", "diverged"):
        if col in frame:
            frame[col] = [" ".join(f"{a:g}/{b:g}" for a, b in e) if isinstance(e, list) else ""
                          for e in frame[col]]
    for col in ("iso_products", "verdict_by_edge", "iso_verdict_by_edge"):
        if col in frame:
            frame[col] = [" ".join(str(v) for v in e) if isinstance(e, list) else ""
                          for e in frame[col]]
    for col in frame:
        values = frame[col].dropna()
        if col.startswith("n_") and len(values) and (values == values.round()).all():
            frame[col] = frame[col].astype("Int64")  # counts stay integers next to blanks
    first = ["check", "cell", "optimizer", "norm", "update", "setting", "verdict"]
    return frame[[c for c in first if c in frame] + [c for c in frame if c not in first]]

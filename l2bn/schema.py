"""The result format, in one place: column names and types, per-layer metrics, file layout.

Torch-free, so the trainer, the sweep runner, the analysis and the synthetic writer all import
it. A sweep's results live under `<storage>/<name>/`:
- `history/<trial_id>.parquet`: one row per epoch (HISTORY_SCHEMA);
- `trials/<trial_id>.parquet`: one summary row (TRIALS_SCHEMA: the history columns + status);
- `sweep.json`: the grid's trial ids.
Every row starts with the flattened TrialConfig, so a row explains itself.
"""
from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import pyarrow as pa

from .config import TrialConfig, field_types
from .provenance import PROVENANCE

Row = dict[str, Any]

# File layout under <storage>/<name>/.
HISTORY, TRIALS, META_FILE = "history", "trials", "sweep.json"
STATUSES = ("completed", "diverged", "failed")
FINISHED = ("completed", "diverged")  # statuses a resume does not train again

# The ConvNet's layers by name (l2bn/model.py builds them; per-layer columns are prefixed).
CONV_LAYERS = ("conv1", "conv2", "conv3")
CLASSIFIER = "fc"
LAYERS = CONV_LAYERS + (CLASSIFIER,)
# Per-layer metrics (l2bn/metrics.py measures them); column `<layer>_<metric>`.
LAYER_METRICS = ("w_norm", "unit_norm", "rel_update", "angular_update",
                 "angular_update_group_median", "dead_fraction", "grad_norm_unit", "eff_lr",
                 "pred_angular_update", "adam_step_rms", "grad_autocorr")

# Per-epoch measurements besides the per-layer ones; NaN in the row of a diverged epoch.
TRAIN_COLUMNS = ("train_loss", "train_error", "steps_per_epoch", "train_images")
TEST_COLUMNS = ("test_loss", "test_error")
TIME_COLUMNS = ("epoch_time_s", "time_s", "images_per_s")

_ARROW = {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_()}
_F, _I = pa.float64(), pa.int64()


def layer_column(layer: str, metric: str) -> str:
    """`conv2_angular_update` style column name."""
    return f"{layer}_{metric}"


def layer_columns(metric: str, layers: tuple[str, ...] = LAYERS) -> list[str]:
    """One metric's column for each layer."""
    return [layer_column(layer, metric) for layer in layers]


CONFIG_SCHEMA = [pa.field(f.name, _ARROW[field_types()[f.name][0]]) for f in fields(TrialConfig)]
HISTORY_SCHEMA = pa.schema(
    CONFIG_SCHEMA
    + [pa.field("trial_id", pa.string()), pa.field("epoch", _I), pa.field("step", _I),
       pa.field("train_loss", _F), pa.field("train_error", _F),
       pa.field("steps_per_epoch", _I), pa.field("train_images", _I),
       pa.field("test_loss", _F), pa.field("test_error", _F)]
    + [pa.field(layer_column(layer, m), _F) for layer in LAYERS for m in LAYER_METRICS]
    + [pa.field(c, _F) for c in TIME_COLUMNS] + [pa.field("diverged", pa.bool_())]
    + [pa.field(k, pa.string()) for k in PROVENANCE]
    + [pa.field("sweep", pa.string())])
SUMMARY_FIELDS = [pa.field("status", pa.string()), pa.field("error", pa.string()),
                  pa.field("wall_time_s", _F), pa.field("epochs_done", _I),
                  pa.field("finished_at", pa.timestamp("ms", tz="UTC"))]
TRIALS_SCHEMA = pa.schema(list(HISTORY_SCHEMA) + SUMMARY_FIELDS)
# What an epoch measures: missing (NaN) in the history row of the epoch a trial diverged in.
MEASURED = (TRAIN_COLUMNS + TEST_COLUMNS + TIME_COLUMNS
            + tuple(layer_column(layer, m) for layer in LAYERS for m in LAYER_METRICS))


def config_columns(cfg: TrialConfig) -> Row:
    """The columns every row starts with: the flattened config and its trial id."""
    return {**cfg.to_row(), "trial_id": cfg.trial_id}


def diverged_row(cfg: TrialConfig, epoch: int, step: int, info: Row) -> Row:
    """History row of the epoch a trial diverged in: nothing was measured, so metrics are NaN."""
    missing = {c: math.nan if HISTORY_SCHEMA.field(c).type == _F else None for c in MEASURED}
    return {**config_columns(cfg), "epoch": epoch, "step": step, **missing, "diverged": True,
            **info}


def final_row(history: list[Row]) -> Row:
    """The trial's summary row: its last row, but for a diverged trial the last finite metrics
    (NaN if it diverged in its first epoch) under the epoch it diverged in."""
    last = history[-1]
    if not last.get("diverged"):
        return last
    finite = [r for r in history if not r.get("diverged")]
    if not finite:
        return last
    return {**finite[-1], "epoch": last["epoch"], "diverged": True}

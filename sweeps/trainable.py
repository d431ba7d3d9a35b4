"""The Ray Tune trainable: a thin shell that drives l2bn.train.Trial (which knows nothing of Ray).

One Tune trial is one group of grid points (`config["group"]`, rows differing only in lr and
l2; a group of one is a single grid point), trained as one stack of models. The trainable
owns the epoch loop, as Ray's own examples do: per epoch it rewrites each member's history
Parquet file, then reports to Tune with a checkpoint of the whole group (`Trial.state()`), so
a retried or resumed group continues after its last finished epoch. At the end it writes
each member's summary row (completed or diverged). Members whose summary row already says
completed/diverged are not trained again. A group that a Tune retry does not restore starts
from its latest checkpoint of an earlier run when there is one (sweeps/resume.py).
"""
from __future__ import annotations

import io
import json
import logging
import os
import pickle
import sys
import tempfile
import time
from typing import Any

import pyarrow.fs as pafs
import ray
import torch
from ray import tune
from ray.tune import Checkpoint

from l2bn.config import TrialConfig
from l2bn.grid import group_name
from l2bn.schema import LAYERS, TEST_COLUMNS, TRAIN_COLUMNS, Row, layer_column
from l2bn.store import ResultStore
from l2bn.train import Trial

from .resume import CHECKPOINT_INFO, STATE_FILE, finished_ids

# With --tensorboard / --mlflow: each member's columns a user watching a run wants as curves.
WATCHED = ("test_error", "diverged") + TRAIN_COLUMNS[:2] + TEST_COLUMNS[:1] + ("images_per_s",) + tuple(
    layer_column(layer, m) for layer in LAYERS
    for m in ("w_norm", "unit_norm", "angular_update", "pred_angular_update", "eff_lr"))


def group_configs(config: dict[str, Any], overrides: dict[str, Any] | None = None) -> list[TrialConfig]:
    """The grid points of a Tune trial's group (its config, or a Tune Trial's `.config`), with
    this run's execution fields (data_dir, device) when given."""
    return [TrialConfig.from_dict({**row, **(overrides or {})}) for row in config["group"]]


def trial_config(config: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrialConfig:
    """The group's first grid point (what the group's members share but lr and l2)."""
    return group_configs(config, overrides)[0]


class UnreadableCheckpoint(Exception):
    """A checkpoint's state.pt cannot be loaded (e.g. a copy cut short by a crash)."""


def _load(path: str, fs: pafs.FileSystem | None = None) -> dict[str, Any]:
    """torch.load of a state.pt (a local path, or one on `fs`); UnreadableCheckpoint naming
    `path` when it is gone or cannot be loaded."""
    try:
        if fs is None:
            return torch.load(path, weights_only=False, map_location="cpu")
        with fs.open_input_stream(path) as f:
            data = io.BytesIO(f.read())
        return torch.load(data, weights_only=False, map_location="cpu")
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UnreadableCheckpoint(f"{path} ({type(exc).__name__}: {first})") from exc


def _saved_state(store: ResultStore, earlier: str | None) -> dict[str, Any] | None:
    """The saved dict of the last checkpoint: Tune's (a retry in this run), else `earlier` (a
    state.pt on `store.fs` from an earlier run); None without one."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            return _load(os.path.join(d, STATE_FILE))
    return _load(earlier, store.fs) if earlier is not None else None


def _restore(cfgs: list[TrialConfig], store: ResultStore, earlier: str | None) -> tuple[Trial, float]:
    """A Trial over the members of the last checkpoint (else over `cfgs`), loaded from it; and
    the wall seconds spent so far. A checkpoint file that cannot be read is named in a warning
    and the group starts from its first epoch: otherwise every retry would fail on it."""
    try:
        saved = _saved_state(store, earlier)
    except UnreadableCheckpoint as exc:
        print(f"warning: checkpoint {exc} is unreadable; training the group from its first "
              "epoch", file=sys.stderr, flush=True)
        saved = None
    if saved is None:
        return Trial(cfgs), 0.0
    by_id = {c.trial_id: c for c in cfgs}
    trial = Trial([by_id[t] for t in saved["state"]["trial_ids"]])
    trial.load(saved["state"])
    return trial, saved["wall_time_s"]


def group_metrics(trial: Trial) -> dict[str, Any]:
    """What Tune sees of a group's epoch: models still training, best test error."""
    last = [h[-1] for h in trial.histories if h]
    errors = [r["test_error"] for r in last if not r["diverged"]]
    return {"epoch": trial.epoch, "models": len(trial.active),
            "test_error": min(errors) if errors else float("nan"),
            "diverged": all(r["diverged"] for r in last) if last else False}


def watched_metrics(rows: list[Row], keys: tuple[str, ...]) -> dict[str, Any]:
    """`keys` of each member's epoch row; prefixed `<trial_id>/` when the group has several."""
    if len(rows) == 1:
        return {k: rows[0][k] for k in keys if k in rows[0]}
    return {f"{r['trial_id']}/{k}": r[k] for r in rows for k in keys if k in r}


def _report(metrics: dict[str, Any], state: dict[str, Any] | None, wall_time_s: float) -> None:
    """tune.report the epoch, with a checkpoint of `state` when one is given."""
    if state is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save({"state": state, "wall_time_s": wall_time_s}, os.path.join(d, STATE_FILE))
        with open(os.path.join(d, CHECKPOINT_INFO), "w") as f:  # what a later run looks for
            json.dump({"trial_ids": state["trial_ids"], "epoch": state["epoch"]}, f)
        tune.report(metrics, checkpoint=Checkpoint.from_directory(d))


def run_trial(config: dict[str, Any], *, store: ResultStore, overrides: dict[str, Any],
              threads: int, checkpoint_every: int = 1, report_keys: tuple[str, ...] = (),
              earlier: dict[str, str] | None = None) -> None:
    """Train one group of grid points as one stack, epoch by epoch: rewrite each member's
    history file, then report to Tune with a checkpoint (the whole group) every
    `checkpoint_every` epochs (plus each member's `report_keys`, for --tensorboard/--mlflow);
    at the end write each member's summary row. Members whose summary row says
    completed/diverged are not trained again. `earlier`: group name -> the state.pt of its
    latest checkpoint from an earlier run (resume.latest_checkpoints)."""
    torch.set_num_threads(threads)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no "Checkpoint created" per epoch
    cfgs = group_configs(config, overrides)
    finished = finished_ids(store, [c.trial_id for c in cfgs])
    todo = [c for c in cfgs if c.trial_id not in finished]
    if not todo:
        tune.report({"epoch": cfgs[0].epochs, "models": 0, "diverged": False})
        return
    name = group_name([c.trial_id for c in cfgs])  # trial ids leave out execution fields
    trial, wall_before = _restore(todo, store, (earlier or {}).get(name))
    trial.drop(finished)
    trial.info["ray_node_id"] = ray.get_runtime_context().get_node_id()  # where each epoch ran
    start = time.perf_counter()
    while not trial.done:
        rows = trial.run_epoch()
        for row in rows:  # before the checkpoint: a resumed group never lacks an epoch
            store.write_history(trial.histories[_member(trial, row["trial_id"])])
        due = bool(trial.active) and trial.epoch % checkpoint_every == 0
        _report(group_metrics(trial) | watched_metrics(rows, report_keys), trial.state() if due else None,
                wall_before + time.perf_counter() - start)
    wall = wall_before + time.perf_counter() - start
    for cfg, final in zip(trial.cfgs, trial.summaries(), strict=True):
        if final and cfg.trial_id not in finished:
            store.write_trial(final, "diverged" if final["diverged"] else "completed", wall_time_s=wall)


def _member(trial: Trial, trial_id: str) -> int:
    return next(i for i, c in enumerate(trial.cfgs) if c.trial_id == trial_id)


def _name(config: dict[str, Any]) -> str:
    return group_name([c.trial_id for c in group_configs(config)])


def trial_name(trial: Any) -> str:
    """Tune's display name: the group's name (l2bn.grid.group_name, stable across runs)."""
    return _name(trial.config)


def trial_dirname(trial: Any) -> str:
    """Tune's per-trial directory: the group's name plus Tune's id (unique, short); a later
    run finds the group's checkpoints by the name before the first '_'."""
    return f"{trial_name(trial)}_{trial.trial_id}"

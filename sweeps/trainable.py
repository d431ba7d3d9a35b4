"""The Ray Tune trainable: a thin shell that drives l2bn.train.Trial (which knows nothing of Ray).

It owns the epoch loop, as Ray's own examples do: per epoch it rewrites the trial's history
Parquet file, then reports to Tune with a checkpoint (`Trial.state()`), so a retried or
resumed trial continues after its last finished epoch. At the end it writes the trial's
summary row (completed or diverged). A trial whose summary row
already says completed/diverged is not trained again (a resumed sweep skips finished work
even if Tune's own experiment state was saved before the trial finished).
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any

import torch
from ray import tune
from ray.tune import Checkpoint

from l2bn.config import TrialConfig
from l2bn.schema import Row
from l2bn.store import ResultStore
from l2bn.train import Trial

STATE_FILE = "state.pt"
# Few keys: Tune keeps per-key statistics of every metric in its experiment state.
REPORTED = ("epoch", "test_error", "diverged")
FINISHED = ("completed", "diverged")


def tune_metrics(row: Row) -> dict[str, Any]:
    """The few columns Tune needs to see (the Parquet files hold the full rows)."""
    # "trial_id" is a Tune-reserved result key, so l2bn's id travels under another name.
    return {"l2bn_trial_id": row["trial_id"], **{k: row[k] for k in REPORTED if k in row}}


def trial_config(config: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrialConfig:
    """The grid point in a Tune config (the trainable's, or a Tune Trial's `.config`), with
    this run's execution fields (data_dir, device) when given."""
    return TrialConfig.from_dict({**config["trial"], **(overrides or {})})


def _restore(trial: Trial) -> float:
    """Load Tune's last checkpoint into the trial, if any; return the wall seconds spent so far."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0.0
    with checkpoint.as_directory() as d:
        saved = torch.load(os.path.join(d, STATE_FILE), weights_only=False, map_location="cpu")
    trial.load(saved["state"])
    return saved["wall_time_s"]


def _report(row: Row, state: dict[str, Any] | None, wall_time_s: float) -> None:
    """tune.report the epoch, with a checkpoint of `state` when one is given."""
    if state is None:
        tune.report(tune_metrics(row))
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save({"state": state, "wall_time_s": wall_time_s}, os.path.join(d, STATE_FILE))
        tune.report(tune_metrics(row), checkpoint=Checkpoint.from_directory(d))


def run_trial(config: dict[str, Any], *, store: ResultStore, overrides: dict[str, Any],
              threads: int, checkpoint_every: int = 1) -> None:
    """Train one grid point epoch by epoch: rewrite its history file, then report to Tune with
    a checkpoint every `checkpoint_every` epochs; at the end write its summary row."""
    torch.set_num_threads(threads)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no "Checkpoint created" per epoch
    cfg = trial_config(config, overrides)
    done = store.read_trial(cfg.trial_id)
    if done is not None and done["status"] in FINISHED:
        tune.report(tune_metrics(done))
        return
    trial = Trial(cfg)
    wall_before = _restore(trial)
    start = time.perf_counter()
    while not trial.done:
        row = trial.run_epoch()
        store.write_history(trial.history)  # before the checkpoint: a resumed trial never lacks an epoch
        due = not row["diverged"] and row["epoch"] % checkpoint_every == 0
        _report(row, trial.state() if due else None, wall_before + time.perf_counter() - start)
    final = trial.summary()
    status = "diverged" if final["diverged"] else "completed"
    store.write_trial(final, status, wall_time_s=wall_before + time.perf_counter() - start)


def trial_name(trial: Any) -> str:
    """Tune's display name: the l2bn trial id (stable across runs)."""
    return trial_config(trial.config).trial_id


def trial_dirname(trial: Any) -> str:
    """Tune's per-trial directory: l2bn id plus Tune's id (unique, short)."""
    return f"{trial_name(trial)}_{trial.trial_id}"

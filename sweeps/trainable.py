"""The Ray Tune trainable: a thin shell around l2bn.train.train (which knows nothing of Ray).

Per epoch it rewrites the trial's history Parquet file, then saves a checkpoint through
tune.report, so a retried or resumed trial continues after its last finished epoch. At the
end it writes the trial's summary row (completed or diverged). A trial whose summary row
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
from l2bn.train import train

from .results import ResultStore, Row

STATE_FILE = "state.pt"
# Few keys: Tune keeps per-key statistics of every metric in its experiment state.
REPORTED = ("epoch", "test_error", "diverged")
FINISHED = ("completed", "diverged")


def tune_metrics(row: Row) -> dict[str, Any]:
    """The few columns Tune needs to see (the Parquet files hold the full rows)."""
    # "trial_id" is a Tune-reserved result key, so l2bn's id travels under another name.
    return {"l2bn_trial_id": row["trial_id"], **{k: row[k] for k in REPORTED if k in row}}


def trial_config(config: dict[str, Any], overrides: dict[str, Any]) -> TrialConfig:
    """The grid point Tune hands us, with this run's execution fields (data_dir, device)."""
    return TrialConfig.from_dict({**config["trial"], **overrides})


def _load_checkpoint() -> tuple[dict[str, Any] | None, float]:
    """(l2bn state, wall seconds spent so far) from Tune's last checkpoint, if any."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None, 0.0
    with checkpoint.as_directory() as d:
        saved = torch.load(os.path.join(d, STATE_FILE), weights_only=False, map_location="cpu")
    return saved["state"], saved["wall_time_s"]


def run_trial(config: dict[str, Any], *, store: ResultStore, overrides: dict[str, Any],
              threads: int, checkpoint_every: int = 1) -> None:
    """Train one grid point, reporting after every epoch and checkpointing every
    `checkpoint_every` epochs (the history file is rewritten every epoch regardless)."""
    torch.set_num_threads(threads)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no "Checkpoint created" per epoch
    cfg = trial_config(config, overrides)
    done = store.read_trial(cfg.trial_id)
    if done is not None and done["status"] in FINISHED:
        tune.report(tune_metrics(done))
        return
    resume, wall_before = _load_checkpoint()
    start = time.perf_counter()
    rows: list[Row] = list(resume["history"]) if resume else []
    pending: dict[str, Any] = {}

    def save_state(state: dict[str, Any]) -> None:
        pending["state"] = state  # train() calls this just before report(row)

    def report(row: Row) -> None:
        rows.append(row)
        store.write_history(rows)  # before the checkpoint: a resumed trial never lacks an epoch
        state = pending.pop("state", None)  # None for a diverged row: nothing to resume from
        if state is None or row["epoch"] % checkpoint_every:
            tune.report(tune_metrics(row))
            return
        wall = wall_before + time.perf_counter() - start
        with tempfile.TemporaryDirectory() as d:
            torch.save({"state": state, "wall_time_s": wall},
                       os.path.join(d, STATE_FILE))
            tune.report(tune_metrics(row), checkpoint=Checkpoint.from_directory(d))

    final = train(cfg, report, resume=resume, save_state=save_state)
    status = "diverged" if final.get("diverged") else "completed"
    store.write_trial(final, status, wall_time_s=wall_before + time.perf_counter() - start)


def trial_name(trial: Any) -> str:
    """Tune's display name: the l2bn trial id (stable across runs)."""
    return TrialConfig.from_dict(trial.config["trial"]).trial_id


def trial_dirname(trial: Any) -> str:
    """Tune's per-trial directory: l2bn id plus Tune's id (unique, short)."""
    return f"{trial_name(trial)}_{trial.trial_id}"

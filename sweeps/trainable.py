"""The Ray Tune trainable: config in, `tune.report` out. One Tune trial is one group of grid
points (`config["group"]`, differing only in lr and l2), run by l2bn.run.GroupRun, which writes
the rows and owns the checkpoints; this shell hands it Tune's checkpoint (a retry) or an earlier
run's (sweeps/resume.py), and reports each epoch with a checkpoint every `checkpoint_every`."""
from __future__ import annotations

import tempfile
from typing import Any

import ray
import torch
from ray import tune
from ray.tune import Checkpoint

from l2bn.config import TrialConfig
from l2bn.grid import group_name
from l2bn.run import Epoch, GroupRun
from l2bn.store import ResultStore

from .ray_env import quiet_worker_loggers
from .watch import watched_metrics


def group_configs(config: dict[str, Any], overrides: dict[str, Any] | None = None) -> list[TrialConfig]:
    """The grid points of a Tune trial's group (its config, or a Tune Trial's `.config`), with
    this run's execution fields (data_dir, device, layout) when given."""
    return [TrialConfig.from_dict({**row, **(overrides or {})}) for row in config["group"]]


def run_trial(config: dict[str, Any], *, store: ResultStore, overrides: dict[str, Any],
              threads: int, checkpoint_every: int = 1, report_keys: tuple[str, ...] = (),
              earlier: dict[str, str] | None = None) -> None:
    """Train one group to its end, reporting each epoch (plus each member's `report_keys`, for
    --tensorboard/--mlflow). `earlier`: group name -> its latest checkpoint folder from an
    earlier run (resume.latest_checkpoints), used when Tune has none."""
    torch.set_num_threads(threads)
    quiet_worker_loggers()
    cfgs = group_configs(config, overrides)
    info = {"ray_node_id": ray.get_runtime_context().get_node_id()}  # where each epoch ran
    if (checkpoint := tune.get_checkpoint()) is not None:
        with checkpoint.as_directory() as folder:
            run = GroupRun.open(cfgs, store, checkpoint=folder, info=info)
    else:
        folder = (earlier or {}).get(group_name([c.trial_id for c in cfgs]))
        run = GroupRun.open(cfgs, store, checkpoint=folder, fs=store.fs, info=info)
    if run.trial is None:  # every member finished in an earlier run
        tune.report({"epoch": cfgs[0].epochs, "models": 0, "diverged": False})
        return

    def report(epoch: Epoch) -> None:
        metrics = epoch.metrics() | watched_metrics(epoch.rows, report_keys)
        if not epoch.models or epoch.epoch % checkpoint_every:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            epoch.save(folder)
            tune.report(metrics, checkpoint=Checkpoint.from_directory(folder))

    run.run(report)

"""The Ray behaviour l2bn relies on that no public API sets: environment switches and logger
names, in this one module (tests/sweeps/test_ray_env.py pins each to the Ray source that reads
it, so an upgrade that drops one fails a test instead of silently changing a sweep).

Public APIs cover everything else: `from ray import tune` (Tuner, TuneConfig, RunConfig,
tune.report, tune.get_checkpoint, Checkpoint), Tune's Callback hooks and the Trial status
constants of `ray.tune.experiment.Trial` (the object those hooks receive).
"""
from __future__ import annotations

import logging
import os

# Switch -> (value, the Ray module that reads it, why). Set with setdefault: a user's own
# value wins.
SWITCHES = {
    # our Parquet files are the record: no Tune JSON/TensorBoard logs per trial (the one
    # logger kept, CSVLoggerCallback, is passed explicitly)
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": ("1", "ray.tune.constants", "no automatic loggers"),
    # trials keep the driver's working directory, so relative paths mean the same everywhere
    "RAY_CHDIR_TO_TRIAL_DIR": ("0", "ray.train.constants", "no chdir into the trial folder"),
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": ("0", "ray.train.constants", "no migration warnings"),
    "RAY_AIR_NEW_OUTPUT": ("0", "ray.air.constants", "the classic, quiet console output"),
    # Tune forces an experiment-state snapshot every `keep_checkpoints` checkpoints of a trial
    # and warns after 5 s; expected here, and --checkpoint-every is the knob
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": (
        "0", "ray.tune.constants", "no warning on experiment-state syncs"),
}
WORKER_SWITCHES = ("RAY_CHDIR_TO_TRIAL_DIR",)  # read in the trial processes too
ADDRESS_ENV = "RAY_ADDRESS"  # the cluster to join, as `ray` itself reads it

# Ray's module loggers (logging.getLogger(__name__)) whose messages a sweep keeps short.
ANALYSIS_LOGGER = "ray.tune.analysis.experiment_analysis"  # trials without logs: expected here
CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"   # each failed attempt's traceback
TRAIN_LOGGER = "ray.train"  # "Checkpoint successfully created" per epoch (its storage module)


def set_switches() -> None:
    """Set SWITCHES in this (the driver's) process, before Ray is imported."""
    for name, (value, _, _) in SWITCHES.items():
        os.environ.setdefault(name, value)


def worker_env() -> dict[str, str]:
    """The switches the trial processes need (for ray.init's runtime_env)."""
    return {name: SWITCHES[name][0] for name in WORKER_SWITCHES}


def cluster_address(given: str | None) -> str | None:
    """--address, else $RAY_ADDRESS; None: a local instance."""
    return given or os.environ.get(ADDRESS_ENV)


def quiet_driver_loggers(trial_errors: logging.Filter) -> None:
    """Driver side: no warning for trials without Tune logs; failed attempts through
    `trial_errors` (one line each)."""
    logging.getLogger(ANALYSIS_LOGGER).setLevel(logging.ERROR)
    logging.getLogger(CONTROLLER_LOGGER).addFilter(trial_errors)


def quiet_worker_loggers() -> None:
    """Trial side: no "Checkpoint successfully created" line per epoch."""
    logging.getLogger(TRAIN_LOGGER).setLevel(logging.WARNING)

"""Resuming a sweep with changed flags: what is applied, what is refused, and how.

Tune's `Tuner.restore` brings back the first run's RunConfig and TuneConfig (its callbacks
with their old settings included) and each trial's own retry budget, checkpoint count and
resources. A resumed sweep applies what can change and refuses, in one line, what cannot.
"""
from __future__ import annotations

from typing import Any

from .errors import SweepError

# Run options a resumed sweep applies (Tune itself would keep the first run's) and the ones
# it cannot change: each restored trial keeps the resources it was created with.
RESUMABLE = {"max_failures": "--max-failures", "keep_checkpoints": "--keep-checkpoints",
             "reuse_actors": "--no-reuse-actors", "progress_interval": "--progress-interval",
             "checkpoint_every": "--checkpoint-every", "overrides": "--data-dir/--set device",
             "tensorboard": "--tensorboard", "mlflow": "--mlflow"}
# --fuse too: the Tune trials (groups of grid points) were made by the first run.
FIXED_ON_RESUME = {"cpus_per_trial": "--cpus-per-trial", "gpus_per_trial": "--gpus-per-trial",
                   "fuse": "--fuse"}


def _shown(value: Any) -> str:
    """A flag's value as the user types it (fuse None is 'auto')."""
    return "auto" if value is None else f"{value:g}"


def run_options(opts: Any) -> dict[str, Any]:
    """The options recorded in sweep.json, to compare on resume."""
    return {k: getattr(opts, k) for k in (*RESUMABLE, *FIXED_ON_RESUME)}


def resume_changes(store: Any, opts: Any) -> list[str]:
    """What this resume changes ('--max-failures: 0 -> 2'); SweepError for an option it cannot
    change. Records this run's options in sweep.json for the next resume."""
    meta = store.read_meta() or {}
    old, new = meta.get("options") or {}, run_options(opts)
    for key, flag in FIXED_ON_RESUME.items():
        if key in old and old[key] != new[key]:
            raise SweepError(f"{flag} {_shown(new[key])} differs from the {_shown(old[key])} the "
                            f"sweep '{opts.name}' started with, and resumed Tune trials keep "
                            f"their resources and members: rerun with {flag} "
                            f"{_shown(old[key])}, or pass a new --name")
    changes = [f"{RESUMABLE[k]}: {old[k]!r} -> {new[k]!r}" for k in RESUMABLE
               if k in old and old[k] != new[k]]
    store.write_meta({**meta, "options": new})
    return changes


def apply_run_options(tuner: Any, opts: Any, callbacks: list) -> None:
    """Put this run's options into a restored Tuner: Tuner.restore brings back the first run's
    RunConfig and TuneConfig (callbacks with their old settings included), and each trial its
    old retry budget and checkpoint count; Tune has no public way to change them."""
    from ray.tune import CheckpointConfig, FailureConfig

    from .callbacks import TrialSettings

    internal = getattr(tuner, "_local_tuner", None)
    if internal is None or not hasattr(internal, "_tune_config"):
        raise SweepError("this Ray version's Tuner cannot take new options on resume: rerun "
                        "with the first run's flags, or pass a new --name")
    run_config = internal.get_run_config()
    run_config.callbacks = [*callbacks, TrialSettings(opts.max_failures, opts.keep_checkpoints)]
    run_config.failure_config = FailureConfig(max_failures=opts.max_failures)
    run_config.checkpoint_config = CheckpointConfig(num_to_keep=opts.keep_checkpoints)
    internal._tune_config.reuse_actors = opts.reuse_actors

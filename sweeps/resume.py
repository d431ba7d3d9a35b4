"""Resuming a sweep: the result store is the source of truth, not Tune's experiment state.

Every run of `run_grid.py` starts a fresh Tuner (no `Tuner.restore`, nothing unpickled) over
the Tune trials (groups) whose grid points lack a completed/diverged row in
`<storage>/<name>/trials/`; a group with a checkpoint from an earlier run continues from its
latest one. So this run's options simply apply (retries, checkpoints kept, resources,
callbacks, --data-dir); only --fuse is refused when changed, since a group is the unit of
its checkpoints. Checkpoints are found by their own files (l2bn.run), not by Tune's folder
names, so renamed or moved trial folders under the sweep's folder still count.
"""
from __future__ import annotations

from typing import Any

from l2bn.config import TrialConfig
from l2bn.grid import group_name, groups
from l2bn.store import ResultStore

from .errors import SweepError

# Run options recorded in sweep.json; a resume applies any change (and names it) except the
# ones in FIXED_ON_RESUME.
RESUMABLE = {"max_failures": "--max-failures", "keep_checkpoints": "--keep-checkpoints",
             "reuse_actors": "--no-reuse-actors", "progress_interval": "--progress-interval",
             "checkpoint_every": "--checkpoint-every", "overrides": "--data-dir/--set device",
             "tensorboard": "--tensorboard", "mlflow": "--mlflow",
             "cpus_per_trial": "--cpus-per-trial", "gpus_per_trial": "--gpus-per-trial"}
# --fuse makes the groups, and a group's checkpoints hold exactly its members.
FIXED_ON_RESUME = {"fuse": "--fuse"}


def _shown(value: Any) -> str:
    """A flag's value as the user types it (fuse None is 'auto')."""
    return "auto" if value is None else f"{value:g}"


def run_options(opts: Any) -> dict[str, Any]:
    """The options recorded in sweep.json, to compare on resume."""
    return {k: getattr(opts, k) for k in (*RESUMABLE, *FIXED_ON_RESUME)}


def resume_changes(store: ResultStore, opts: Any, meta: dict[str, Any] | None = None) -> list[str]:
    """What this run changes from the last one ('--max-failures: 0 -> 2'); SweepError (one
    line) for an option it cannot change. Records this run's options in sweep.json. `meta`:
    sweep.json as already read (default: read it)."""
    meta = (meta if meta is not None else store.read_meta()) or {}
    old, new = meta.get("options") or {}, run_options(opts)
    for key, flag in FIXED_ON_RESUME.items():
        if key in old and old[key] != new[key]:
            raise SweepError(f"{flag} {_shown(new[key])} differs from the {_shown(old[key])} the "
                             f"sweep '{opts.name}' started with, and its groups' checkpoints hold "
                             f"those members: rerun with {flag} {_shown(old[key])}, or pass a "
                             "new --name")
    changes = [f"{RESUMABLE[k]}: {old[k]!r} -> {new[k]!r}" for k in RESUMABLE
               if k in old and old[k] != new[k]]
    store.write_meta({**meta, "options": new})
    return changes


def unfinished_groups(store: ResultStore, configs: list[TrialConfig],
                      fuse: int | None) -> list[list[TrialConfig]]:
    """The groups (Tune trials) with at least one member lacking a completed/diverged row."""
    done = store.finished([c.trial_id for c in configs])
    return [g for g in groups(configs, fuse) if not all(c.trial_id in done for c in g)]


def latest_checkpoints(store: ResultStore, todo: list[list[TrialConfig]]) -> dict[str, str]:
    """Group name -> the folder (a path on `store.fs`) of its latest checkpoint from an
    earlier run, for the groups in `todo` that have one anywhere under the sweep's folder."""
    from l2bn.run import latest_checkpoints as find  # torch: only when resuming

    wanted = {group_name([c.trial_id for c in g]): [c.trial_id for c in g] for g in todo}
    return find(store.fs, store.base, wanted)

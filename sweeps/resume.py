"""Resuming a sweep: the result store is the source of truth, not Tune's experiment state.

Every run of `run_grid.py` starts a fresh Tuner (no `Tuner.restore`, nothing unpickled) over
the Tune trials (groups) whose grid points lack a completed/diverged row in
`<storage>/<name>/trials/`; a group with a checkpoint from an earlier run continues from its
latest one. So this run's options simply apply (retries, checkpoints kept, resources,
callbacks, --data-dir); only --fuse is refused when changed, since a group is the unit of
its checkpoints.
"""
from __future__ import annotations

import json
from typing import Any

import pyarrow.fs as pafs

from l2bn.config import TrialConfig
from l2bn.grid import group_name, groups
from l2bn.store import ResultStore

from .errors import SweepError

FINISHED = ("completed", "diverged")
CHECKPOINT_INFO = "group.json"  # in each checkpoint folder: {"trial_ids": [...], "epoch": n}
STATE_FILE = "state.pt"         # in each checkpoint folder: the group's Trial.state()

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
    done = finished_ids(store, [c.trial_id for c in configs])
    return [g for g in groups(configs, fuse) if not all(c.trial_id in done for c in g)]


def finished_ids(store: ResultStore, ids: list[str]) -> set[str]:
    """Those of `ids` whose summary row says completed or diverged: one listing of `trials/`
    (ResultStore.trial_ids), then a read of only the rows that exist."""
    written = store.trial_ids()
    return {i for i in ids if i in written
            and (row := store.read_trial(i)) is not None and row["status"] in FINISHED}


def latest_checkpoints(store: ResultStore, todo: list[list[TrialConfig]]) -> dict[str, str]:
    """Group name -> the `state.pt` (a path on `store.fs`) of its latest checkpoint from an
    earlier run, for the groups in `todo` that have one. Tune keeps each run's checkpoints in
    the trial folder `<group name>_<Tune's trial id>` under the sweep's folder."""
    wanted = {group_name([c.trial_id for c in g]): [c.trial_id for c in g] for g in todo}
    best: dict[str, tuple[int, str]] = {}
    for trial_dir in _dirs(store.fs, store.base):
        name = trial_dir.rsplit("/", 1)[-1].split("_", 1)[0]
        if name not in wanted:
            continue
        for folder in _dirs(store.fs, trial_dir):
            if not folder.rsplit("/", 1)[-1].startswith("checkpoint_"):
                continue
            info = _checkpoint_info(store.fs, folder, wanted[name])
            if info and info["trial_ids"] == wanted[name] and info["epoch"] > best.get(name, (-1, ""))[0]:
                best[name] = (info["epoch"], f"{folder}/{STATE_FILE}")
    return {name: path for name, (_, path) in best.items()}


def _dirs(fs: pafs.FileSystem, path: str) -> list[str]:
    try:
        entries = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    return sorted(e.path for e in entries if e.type == pafs.FileType.Directory)


def _checkpoint_info(fs: pafs.FileSystem, folder: str, members: list[str]) -> dict[str, Any] | None:
    """The checkpoint's group.json if it and state.pt are both there; None for a folder cut
    short by a crash. A checkpoint written before group.json existed (one trial folder per
    group then, --fuse unchanged) counts as `members` at epoch = Tune's checkpoint index, a
    lower bound of its epoch, so any later checkpoint continuing from it ranks above it."""
    info, state = (fs.get_file_info(f"{folder}/{n}") for n in (CHECKPOINT_INFO, STATE_FILE))
    if state.type != pafs.FileType.File:
        return None
    if info.type != pafs.FileType.File:
        index = folder.rsplit("_", 1)[-1]
        return {"trial_ids": members, "epoch": int(index)} if index.isdigit() else None
    try:
        with fs.open_input_stream(info.path) as f:
            data = json.loads(f.read().decode())
        return {"trial_ids": list(data["trial_ids"]), "epoch": int(data["epoch"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None

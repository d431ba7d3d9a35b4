"""GroupRun: the one place a group's epochs run, its rows are written, and its checkpoints are
saved, found and loaded; `train()`, the Tune trainable and benchmarks/device_run.py all use it.

A run trains a Trial epoch by epoch: after each epoch it rewrites every member's history file
(when given a ResultStore), then hands the epoch (its rows, the group's state, a way to save a
checkpoint) to a callback; at the end it writes each member's summary row (completed or
diverged; failed with the reason when the callback stopped it). Members whose summary row
already says completed or diverged are not trained again.

A checkpoint is a folder holding STATE_FILE (`Trial.state()` and the wall seconds so far) and
INFO_FILE (the members and the epoch, readable without torch). A later run finds a group's
latest checkpoint by those two files alone, wherever they lie under the sweep's folder (Tune's
folder names are not read). One that cannot be loaded is named in a warning and the group
trains from its first epoch: otherwise every retry would fail on it.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
import torch

from .config import TrialConfig
from .schema import Row
from .store import ResultStore
from .train import Trial

STATE_FILE = "state.pt"   # the group's Trial.state() and the wall seconds so far (torch.save)
INFO_FILE = "group.json"  # {"trial_ids": [...], "epoch": n}: what a later run looks for


class UnreadableCheckpoint(Exception):
    """A checkpoint's state.pt cannot be loaded (e.g. a copy cut short by a crash)."""


@dataclass
class Epoch:
    """One finished epoch of a group, as a callback sees it."""

    run: GroupRun
    rows: list[Row]     # this epoch's rows: one per model in the stack at the epoch's start
    time_s: float       # the epoch's wall seconds (training, test pass, metrics)

    @property
    def epoch(self) -> int:
        return self.run.trial.epoch

    @property
    def models(self) -> int:
        """Models still training after this epoch."""
        return len(self.run.trial.active)

    def metrics(self) -> dict[str, Any]:
        """The group at a glance: epoch, models still training, best test error, whether
        every member has diverged."""
        last = [h[-1] for h in self.run.trial.histories if h]
        errors = [r["test_error"] for r in last if not r["diverged"]]
        return {"epoch": self.epoch, "models": self.models,
                "test_error": min(errors) if errors else float("nan"),
                "diverged": all(r["diverged"] for r in last) if last else False}

    def state(self) -> dict[str, Any]:
        """The group's Trial.state() (continue after this epoch with Trial.load)."""
        return self.run.trial.state()

    def save(self, folder: str) -> None:
        """Write this epoch's checkpoint into `folder` (an existing local folder)."""
        state = self.state()
        torch.save({"state": state, "wall_time_s": self.run.wall_time_s()},
                   os.path.join(folder, STATE_FILE))
        with open(os.path.join(folder, INFO_FILE), "w") as f:
            json.dump({"trial_ids": state["trial_ids"], "epoch": state["epoch"]}, f)


class GroupRun:
    """Trains one group (a Trial) to its end, writing its rows to `store` when given one."""

    def __init__(self, trial: Trial | None, store: ResultStore | None = None,
                 wall_before: float = 0.0, finished: set[str] | None = None):
        self.trial, self.store = trial, store
        self.finished = set(finished or ())
        self.wall_before = wall_before
        self._start = time.perf_counter()

    @classmethod
    def open(cls, cfgs: list[TrialConfig], store: ResultStore | None = None, *,
             checkpoint: str | None = None, fs: pafs.FileSystem | None = None,
             info: dict[str, Any] | None = None) -> GroupRun:
        """The run of a group's unfinished members (per `store`), continued from the
        checkpoint folder `checkpoint` (a local path, or one on `fs`) when given and readable;
        `info` joins every row's provenance columns. Trial is None when nothing is left."""
        finished = store.finished([c.trial_id for c in cfgs]) if store is not None else set()
        todo = [c for c in cfgs if c.trial_id not in finished]
        if not todo:
            return cls(None, store, finished=finished)
        saved = _readable(checkpoint, fs)
        if saved is None:
            trial, wall = Trial(todo), 0.0
        else:
            by_id = {c.trial_id: c for c in cfgs}
            trial, wall = Trial([by_id[t] for t in saved["state"]["trial_ids"]]), saved["wall_time_s"]
            trial.load(saved["state"])
        trial.drop(finished)
        trial.info.update(info or {})
        return cls(trial, store, wall, finished)

    def wall_time_s(self) -> float:
        """Wall seconds of the group so far, earlier runs' included."""
        return self.wall_before + time.perf_counter() - self._start

    def run(self, on_epoch: Callable[[Epoch], str | None] = lambda epoch: None) -> list[Row]:
        """Train to the end; after each epoch write the histories, then call on_epoch, which
        stops the run by returning a reason (the unfinished members' rows then say failed,
        with it). Returns each member's summary row ({} for one that ran no epoch)."""
        trial, cut = self.trial, None
        if trial is None:
            return []
        while not trial.done and cut is None:
            start = time.perf_counter()
            rows = trial.run_epoch()
            seconds = time.perf_counter() - start
            if self.store is not None:
                histories = {c.trial_id: h for c, h in zip(trial.cfgs, trial.histories, strict=True)}
                for row in rows:  # before the callback's checkpoint: a resume never lacks an epoch
                    self.store.write_history(histories[row["trial_id"]])
            cut = on_epoch(Epoch(self, rows, seconds))
        finals = trial.summaries()
        if self.store is not None:
            wall = self.wall_time_s()
            for cfg, final in zip(trial.cfgs, finals, strict=True):
                if final and cfg.trial_id not in self.finished:
                    status = "failed" if cut else "diverged" if final["diverged"] else "completed"
                    self.store.write_trial(final, status, wall_time_s=wall, error=cut)
        return finals


def load_checkpoint(folder: str, fs: pafs.FileSystem | None = None) -> dict[str, Any]:
    """The saved dict of a checkpoint folder (a local path, or one on `fs`);
    UnreadableCheckpoint naming its state.pt when that is gone or cannot be loaded."""
    path = f"{folder.rstrip('/')}/{STATE_FILE}"
    try:
        if fs is None:
            return torch.load(path, weights_only=False, map_location="cpu")
        with fs.open_input_stream(path) as f:
            data = io.BytesIO(f.read())
        return torch.load(data, weights_only=False, map_location="cpu")
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UnreadableCheckpoint(f"{path} ({type(exc).__name__}: {first})") from exc


def _readable(folder: str | None, fs: pafs.FileSystem | None) -> dict[str, Any] | None:
    """load_checkpoint, or None (with a warning naming the file) when it cannot be read."""
    if folder is None:
        return None
    try:
        return load_checkpoint(folder, fs)
    except UnreadableCheckpoint as exc:
        print(f"warning: checkpoint {exc} is unreadable; training the group from its first "
              "epoch", file=sys.stderr, flush=True)
        return None


def latest_checkpoints(fs: pafs.FileSystem, root: str, wanted: dict[str, list[str]]) -> dict[str, str]:
    """Key -> the folder (a path on `fs`) of the latest checkpoint under `root` whose members
    are exactly `wanted[key]`, for the keys that have one. One recursive listing of `root`;
    any folder holding a STATE_FILE counts, whatever its name or depth."""
    try:
        entries = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError:
        return {}
    files = {e.path for e in entries if e.type == pafs.FileType.File}
    by_members = {tuple(ids): key for key, ids in wanted.items()}
    best: dict[str, tuple[int, str]] = {}
    for path in sorted(files):
        folder, _, name = path.rpartition("/")
        if name != STATE_FILE:
            continue
        info = _checkpoint_info(fs, folder, f"{folder}/{INFO_FILE}" in files)
        key = by_members.get(tuple(info["trial_ids"])) if info else None
        if key is not None and info["epoch"] > best.get(key, (-1, ""))[0]:
            best[key] = (info["epoch"], folder)
    return {key: folder for key, (_, folder) in best.items()}


def _checkpoint_info(fs: pafs.FileSystem, folder: str, has_info: bool) -> dict[str, Any] | None:
    """{"trial_ids", "epoch"} of a checkpoint folder: its group.json, or (a checkpoint written
    before group.json existed) its state.pt; None when neither can be read."""
    try:
        if has_info:
            with fs.open_input_stream(f"{folder}/{INFO_FILE}") as f:
                data = json.loads(f.read().decode())
        else:
            data = load_checkpoint(folder, fs)["state"]
        return {"trial_ids": list(data["trial_ids"]), "epoch": int(data["epoch"])}
    except (OSError, ValueError, KeyError, TypeError, UnreadableCheckpoint):
        return None

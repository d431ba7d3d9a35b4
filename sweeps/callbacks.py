"""Driver-side Tune hooks: the `failed` summary rows, live progress with an ETA, and the
trials' names and folders."""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import pyarrow as pa
import torch
from ray.tune import Callback
from ray.tune.experiment import Trial  # the object Callback hooks receive: its status constants

from l2bn.config import TrialConfig
from l2bn.grid import group_name
from l2bn.provenance import VERSIONS, run_info
from l2bn.schema import HISTORY, Row, config_columns, final_row
from l2bn.store import ResultStore

from .trainable import group_configs


def trial_config(config: dict[str, Any]) -> TrialConfig:
    """The group's first grid point (what the group's members share but lr and l2)."""
    return group_configs(config)[0]


def trial_name(trial: Any) -> str:
    """Tune's display name: the group's name (l2bn.grid.group_name, stable across runs)."""
    return group_name([c.trial_id for c in group_configs(trial.config)])


def trial_dirname(trial: Any) -> str:
    """Tune's per-trial folder: the group's name plus Tune's id (unique, short). Only for
    people: a later run finds checkpoints by their own files (l2bn.run.latest_checkpoints)."""
    return f"{trial_name(trial)}_{trial.trial_id}"


class OneLineTrialErrors(logging.Filter):
    """Tune logs every failed trial attempt with the worker's whole traceback: keep its last
    line (the exception). The trial's error file and `error` column keep the details."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            lines = [ln.strip() for ln in str(record.exc_info[1]).splitlines() if ln.strip()]
            record.msg = f"{record.getMessage()}: {lines[-1] if lines else type(record.exc_info[1]).__name__}"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


class FailedTrialWriter(Callback):
    """Writes a `failed` summary row for each grid point of a group (Tune trial) that errored
    after all its retries."""

    def __init__(self, store: ResultStore, overrides: dict[str, Any] | None = None):
        self.store = store
        self.overrides = dict(overrides or {})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = _error_text(trial)
        cfgs = group_configs(trial.config, self.overrides)
        done = self.store.finished([c.trial_id for c in cfgs])
        for cfg in cfgs:
            if cfg.trial_id in done:
                continue  # a member that finished before the group failed keeps its row
            row = self._last_row(cfg.trial_id)
            if row is None:  # failed before its first epoch: config and the driver's versions
                info_now = run_info(torch.device("cpu"))
                row = {**config_columns(cfg), **{k: info_now[k] for k in VERSIONS}}
            self.store.write_trial(row, "failed", wall_time_s=None, error=error)

    def _last_row(self, trial_id: str) -> Row | None:
        """The trial's last history row; None (with a named warning if the file exists but
        cannot be read) when there is none."""
        try:
            rows = self.store.read_history(trial_id)
        except (pa.ArrowException, OSError, ValueError) as exc:
            path = self.store.path(HISTORY, trial_id)
            print(f"warning: trial {trial_id}: history file {path} is unreadable "
                  f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); its failed row "
                  "holds the config and the driver's versions only", file=sys.stderr, flush=True)
            return None
        return final_row(rows) if rows else None


def _error_text(trial: Any, limit: int = 2000) -> str:
    """The last line of the trial's error trace (the exception), or a placeholder."""
    text = ""
    try:  # the driver's local copy is written at once; the storage copy is synced later
        with open(trial.error_file) as f:
            text = f.read()
    except (AttributeError, TypeError, OSError):
        try:
            text = trial.get_error() or ""
        except Exception:  # noqa: BLE001 - a missing error file must not break the driver
            text = ""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    picked = [ln for ln in lines if ln.split(":")[0].endswith(("Error", "Exception"))]
    return (picked or lines or ["unknown error (no error file)"])[-1][:limit]


@dataclass
class Counts:
    """Trials by state and epochs for the progress line."""

    done: int = 0
    running: int = 0
    starting: int = 0
    pending: int = 0
    failed: int = 0
    epochs_total: int = 0
    epochs_done: int = 0
    epochs_left: int = 0


def _fmt_s(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress(Callback):
    """Prints `done/running/starting/pending/failed`, finished epochs and an ETA every
    `interval` s and at each finish.

    A trial counts as running once it has reported an epoch since it (re)started; before that
    it is starting (a reused worker picking it up, loading data). Epochs count only when
    finished: all of a done trial's (diverged ones included), the reported ones of the
    others. The ETA is the epochs that can still run (not those of failed trials) divided by
    the epoch rate seen so far in this run.
    """

    def __init__(self, interval: float = 30.0, out: TextIO = sys.stdout):
        self.interval, self.out = interval, out
        self._reset()

    def _reset(self) -> None:
        self.t0: float | None = None
        self.epochs0 = 0
        self.last_print = 0.0
        self.last_finished: tuple[int, int] | None = None
        self.reporting: set[str] = set()  # Tune trial ids that reported since they (re)started

    def __getstate__(self) -> dict:  # pickled into tuner.pkl: keep the class, not the stream
        return {"interval": self.interval}

    def __setstate__(self, state: dict) -> None:
        self.interval, self.out = state["interval"], sys.stdout
        self._reset()

    def setup(self, **info: Any) -> None:
        self._reset()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.reporting.discard(trial.trial_id)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.reporting.discard(trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self.reporting.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.reporting.discard(trial.trial_id)
        r = trial.last_result or {}
        cfg = trial_config(trial.config)
        what = "diverged" if r.get("diverged") else "done"
        err = r.get("test_error", float("nan"))
        n = len(trial.config["group"])
        point = f"lr={cfg.lr:g} l2={cfg.l2:g}" if n == 1 else f"{n} lr x l2 points"
        self._print(f"{what} {cfg.trial_id if n == 1 else trial.trial_id} {cfg.optimizer} {point} "
                    f"{cfg.norm}/{cfg.update}/{cfg.l2_scope} seed={cfg.seed}: "
                    f"epoch {r.get('epoch', '?')}/{cfg.epochs} test_error={err:.4f}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.reporting.discard(trial.trial_id)
        self._print(f"FAILED {trial_config(trial.config).trial_id}: {_error_text(trial, 300)}")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        counts = self._counts(trials)
        if self.t0 is None:
            self.t0, self.epochs0 = now, counts.epochs_done
        finished = (counts.done, counts.failed)  # a line per finished trial, else every `interval`
        if finished != self.last_finished or now - self.last_print >= self.interval:
            self.last_finished, self.last_print = finished, now
            self._print(self.status_line(trials, now))

    def status_line(self, trials: list, now: float) -> str:
        c = self._counts(trials)
        elapsed = now - (self.t0 or now)
        rate = (c.epochs_done - self.epochs0) / elapsed if elapsed > 0 else 0.0
        eta = _fmt_s(c.epochs_left / rate) if rate > 0 else ("0:00:00" if c.epochs_left == 0 else "--")
        return (f"[{_fmt_s(elapsed)}] trials: {c.done} done, {c.running} running, "
                f"{c.starting} starting, {c.pending} pending, {c.failed} failed of {len(trials)} "
                f"| epochs {c.epochs_done}/{c.epochs_total} | ETA {eta}")

    def _counts(self, trials: list) -> Counts:
        c = Counts()
        for t in trials:
            epochs = int(t.config["group"][0]["epochs"])
            reported = int((t.last_result or {}).get("epoch") or 0)
            c.epochs_total += epochs
            if t.status == Trial.TERMINATED:
                c.done += 1
                c.epochs_done += epochs  # diverged trials end early: nothing is left to run
                continue
            c.epochs_done += reported
            if t.status == Trial.ERROR:
                c.failed += 1
                continue
            c.epochs_left += epochs - reported
            if t.status != Trial.RUNNING:
                c.pending += 1
            elif t.trial_id in self.reporting:
                c.running += 1
            else:
                c.starting += 1
        return c

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

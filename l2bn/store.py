"""Parquet results of a sweep: `<storage>/<name>/history/` and `<storage>/<name>/trials/`.

One file per trial, named by the config's stable `trial_id`, so a retried or resumed trial
overwrites its own file and never duplicates rows. Each file is written whole: to a hidden
temporary name and renamed on local/NFS paths, as one object PUT on s3:// and gs:// (atomic
per object), so a reader never sees a partial file. Readers (pyarrow.dataset, pandas) skip
names starting with "." or "_", i.e. the temporary files. Every file has the schema of
l2bn/schema.py, in the same column order and types (missing ones null), so the directory
reads as one dataset. Reading is here too (the URI, the temporary-file filter, sweep.json):
the sweep driver and the analysis read results through this module only. Torch-free.
"""
from __future__ import annotations

import datetime as _dt
import json
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .schema import FINISHED, HISTORY, HISTORY_SCHEMA, META_FILE, STATUSES, TRIALS, TRIALS_SCHEMA, Row


class ResultStore:
    """The Parquet side of one sweep, on a local path or a cloud URI (s3://, gs://)."""

    def __init__(self, root: str, name: str):
        self.root, self.name = root, name
        self._fs: pafs.FileSystem | None = None
        self._base = ""

    def __getstate__(self) -> dict[str, Any]:  # each process opens its own filesystem
        return {"root": self.root, "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], state["name"])

    @property
    def fs(self) -> pafs.FileSystem:
        if self._fs is None:
            self._fs, base = pafs.FileSystem.from_uri(self.root)
            self._base = f"{base.rstrip('/')}/{self.name}"
        return self._fs

    @property
    def base(self) -> str:
        """The sweep's folder as a path on `fs`."""
        self.fs  # noqa: B018 - resolves _base
        return self._base

    def path(self, kind: str, trial_id: str | None = None) -> str:
        """Filesystem path of a dataset directory, or of one trial's file in it."""
        folder = f"{self.base}/{kind}"
        return folder if trial_id is None else f"{folder}/{trial_id}.parquet"

    def uri(self, kind: str = "") -> str:
        """What a user passes to pandas.read_parquet / pyarrow.dataset."""
        return f"{self.root.rstrip('/')}/{self.name}" + (f"/{kind}" if kind else "")

    def read_meta(self) -> dict[str, Any] | None:
        """The sweep's sweep.json (grid, trial ids, run options) if it was written; ValueError
        naming the file if it is there but not a JSON object."""
        return read_meta(self.fs, self.base, f"{self.uri()}/{META_FILE}")

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.fs.create_dir(self.base, recursive=True)
        with self.fs.open_output_stream(f"{self.base}/{META_FILE}") as f:
            f.write(json.dumps(meta, indent=1).encode())

    def write_history(self, rows: list[Row]) -> None:
        """Rewrite one trial's whole history file (one row per epoch, last write per epoch wins)."""
        by_epoch = {int(r["epoch"]): r for r in rows}
        ordered = [by_epoch[e] for e in sorted(by_epoch)]
        self._write(HISTORY, ordered[0]["trial_id"], ordered, HISTORY_SCHEMA)

    def write_trial(self, row: Row, status: str, wall_time_s: float | None,
                    error: str | None = None) -> None:
        """Write the one-row summary of a finished trial."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        done = row.get("epoch")
        full = {**row, "status": status, "error": error, "wall_time_s": wall_time_s,
                "epochs_done": None if done is None else int(done) - (status == "diverged"),
                "finished_at": _dt.datetime.now(_dt.timezone.utc)}  # to the ms (schema)
        self._write(TRIALS, row["trial_id"], [full], TRIALS_SCHEMA)

    def trial_ids(self) -> set[str]:
        """Ids of the trials with a summary row file (one listing of `trials/`, not a look-up
        per trial: a sweep of thousands on S3 starts without thousands of requests)."""
        return set(parquet_files(self.fs, self.path(TRIALS)))

    def finished(self, ids: Iterable[str]) -> set[str]:
        """Those of `ids` whose summary row says completed or diverged: one listing of
        `trials/`, then a read of only the rows that exist."""
        written = self.trial_ids()
        return {i for i in ids if i in written
                and (row := self.read_trial(i)) is not None and row["status"] in FINISHED}

    def read_trial(self, trial_id: str) -> Row | None:
        """The trial's summary row if it has one."""
        try:  # one request where the file exists, not an existence check first
            with self.fs.open_input_file(self.path(TRIALS, trial_id)) as f:
                return pq.read_table(f).to_pylist()[0]
        except FileNotFoundError:
            return None

    def read_history(self, trial_id: str) -> list[Row] | None:
        """The trial's history rows, None without a file; pyarrow's error if unreadable."""
        try:
            return read_parquet(self.fs, self.path(HISTORY, trial_id)).to_pylist()
        except FileNotFoundError:
            return None

    def _write(self, kind: str, trial_id: str, rows: list[Row], schema: pa.Schema) -> None:
        table = to_table(rows, schema, sweep=self.name)
        fs, final = self.fs, self.path(kind, trial_id)
        fs.create_dir(self.path(kind), recursive=True)
        if isinstance(fs, pafs.LocalFileSystem):
            tmp = f"{self.path(kind)}/.{trial_id}.{uuid.uuid4().hex[:8]}.tmp"
            pq.write_table(table, tmp, filesystem=fs)
            fs.move(tmp, final)  # rename(2): atomic on one filesystem
        else:
            pq.write_table(table, final, filesystem=fs)  # one object PUT: atomic per object


def open_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and base path of a sweep's folder: a local path (~ expanded, made
    absolute) or a URI pyarrow.fs understands (s3://, gs://, file://)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), Path(uri).expanduser().resolve().as_posix()
    return pafs.FileSystem.from_uri(uri)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    """Whether a file or folder is there."""
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def parquet_files(fs: pafs.FileSystem, folder: str) -> dict[str, str]:
    """trial_id -> path of each `folder/*.parquet` (empty if the folder is missing); names
    starting with "." or "_" are a writer's temporary files and are left out."""
    infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return {i.base_name.removesuffix(".parquet"): i.path for i in infos
            if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
            and not i.base_name.startswith((".", "_"))}


def read_parquet(fs: pafs.FileSystem, path: str) -> pa.Table:
    """One result file as a table (pyarrow's error if it cannot be read)."""
    with fs.open_input_file(path) as f:  # ParquetFile skips the dataset layer: ~2x faster
        return pq.ParquetFile(f).read()


def read_meta(fs: pafs.FileSystem, base: str, name: str | None = None) -> dict[str, Any] | None:
    """`base/sweep.json` (grid, trial ids, run options) if it was written; ValueError naming
    it (`name`, default its path) if it is there but not a JSON object."""
    path = f"{base}/{META_FILE}"
    name = name or path
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        text = f.read().decode(errors="replace")
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{name} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{name} holds a {type(meta).__name__}, not a JSON object")
    return meta


def grid_trial_ids(fs: pafs.FileSystem, base: str) -> list[str]:
    """The trial ids sweep.json records (empty without the file); ValueError naming the file
    when it is unreadable or its 'trial_ids' is not a list."""
    meta = read_meta(fs, base)
    if meta is None:
        return []
    ids = meta.get("trial_ids")
    if not isinstance(ids, list):
        raise ValueError(f"{base}/{META_FILE}: 'trial_ids' is a {type(ids).__name__}, not a list")
    return [str(t) for t in ids]


def to_table(rows: Iterable[Row], schema: pa.Schema, sweep: str) -> pa.Table:
    """Rows -> a table with exactly `schema`'s columns first (missing ones null), then any
    columns the schema does not know (a newer l2bn), typed from their values."""
    rows = [{**r, "sweep": sweep} for r in rows]
    extra = sorted({k for r in rows for k in r} - set(schema.names))
    columns = {f.name: pa.array([_clean(r.get(f.name)) for r in rows], type=f.type)
               for f in schema}
    for k in extra:
        columns[k] = pa.array([_clean(r.get(k)) for r in rows])
    return pa.table(columns)


def _clean(value: Any) -> Any:
    """numpy/torch scalars -> Python; NaN stays NaN (a real 'not applicable' metric)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value

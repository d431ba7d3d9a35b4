"""Read a sweep's Parquet results into DataFrames, with the derived columns added once.

Layout (l2bn/schema.py): `<results>/history/<trial_id>.parquet` (one row per epoch) and
`<results>/trials/<trial_id>.parquet` (one final row). `<results>` is a local path or a
URI that pyarrow.fs understands (s3://, gs://, file://). Files are read one by one so that one
unreadable file, a trial still running or a failed trial is skipped with a reason, not fatal.
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from l2bn import budget, store, theory
from l2bn.config import TrialConfig
from l2bn.schema import CONV_LAYERS, HISTORY, META_FILE, TRIALS, layer_columns

from .checks.premise import CHANCE_ERROR

# Config fields besides (optimizer, norm, update, lr, l2, seed) that define a separate setting
# when a sweep varies them; data_dir and device say where a trial ran, not what it computed.
SETTING_COLUMNS = ("l2_scope", "width", "epochs", "batch_size", "n_train", "n_test",
                   "augment", "scale_invariant", "precision", "data")
USED_STATUSES = ("completed", "diverged")
READ_THREADS = 8


class ResultsError(Exception):
    """The results location is missing, empty, or holds nothing usable."""


@dataclass
class Results:
    """Trials used by the analysis (one row each), their histories, and what was skipped."""

    uri: str
    trials: pd.DataFrame
    history: pd.DataFrame
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (trial id, kind, reason)
    warnings: list[str] = field(default_factory=list)
    n_found: int = 0


def open_results(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and base path for a local path or a cloud URI (l2bn.store.open_uri)."""
    try:
        return store.open_uri(uri)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise ResultsError(f"cannot open results URI {uri!r}: {exc}") from exc


def list_parquet(fs: pafs.FileSystem, base: str, kind: str) -> dict[str, str]:
    """trial_id -> path of `<base>/<kind>/*.parquet` (l2bn.store.parquet_files: a writer's
    temporary files left out)."""
    return store.parquet_files(fs, f"{base}/{kind}")


class GridFileError(Exception):
    """sweep.json exists but cannot be read; the message names the file and the problem."""


def grid_trial_ids(fs: pafs.FileSystem, base: str) -> list[str]:
    """The trial ids the sweep runner recorded in `<base>/sweep.json` (empty without one);
    GridFileError if the file is there but unreadable (not-started trials would be lost)."""
    try:
        return store.grid_trial_ids(fs, base)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise GridFileError(f"{base}/{META_FILE} is unreadable ({type(exc).__name__}: {exc}); trials "
                            "of the grid that have no result file yet cannot be listed as not "
                            "started") from None


def _read_one(fs: pafs.FileSystem, path: str) -> pa.Table | str:
    """The file as a table, or the reason it could not be read."""
    try:
        return store.read_parquet(fs, path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        return f"unreadable Parquet file {path}: {type(exc).__name__}: {exc}"


def read_tables(fs: pafs.FileSystem, paths: dict[str, str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Concatenate the readable files into one DataFrame; return it and {trial_id: reason}."""
    ids = sorted(paths)
    with ThreadPoolExecutor(READ_THREADS) as pool:
        read = list(pool.map(lambda t: _read_one(fs, paths[t]), ids))
    tables = [t for t in read if isinstance(t, pa.Table) and t.num_rows]
    bad = {i: r for i, r in zip(ids, read, strict=True) if isinstance(r, str)}
    bad.update({i: f"empty Parquet file {paths[i]}" for i, r in zip(ids, read, strict=True)
                if isinstance(r, pa.Table) and not r.num_rows})
    if not tables:
        return pd.DataFrame(), bad
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.to_pandas(), bad


def load_results(uri: str) -> Results:
    """Read `<uri>/trials` and `<uri>/history`; keep completed and diverged trials."""
    fs, base = open_results(uri)
    if not store.exists(fs, base):
        raise ResultsError(f"results path not found: {uri}")
    trial_paths, history_paths = list_parquet(fs, base, TRIALS), list_parquet(fs, base, HISTORY)
    known = set(trial_paths) | set(history_paths)
    grid_warnings: list[str] = []
    try:
        not_started = sorted(set(grid_trial_ids(fs, base)) - known)
    except GridFileError as exc:
        not_started, grid_warnings = [], [f"sweep.json: {exc}"]
    if not known:
        grid = f" (sweep.json lists {len(not_started)} trials, none started)" if not_started else ""
        raise ResultsError(f"no results under {uri}{grid}: expected Parquet files in "
                           f"{uri}/trials/ and {uri}/history/")
    trials, bad_trials = read_tables(fs, trial_paths)
    history, bad_history = read_tables(fs, history_paths)
    # Ids come from the rows, so a compacted file holding many trials reads the same as one
    # file per trial; an unreadable file can only be named by its file name.
    history_ids = set(history["trial_id"]) if "trial_id" in history else set()
    row_ids = history_ids | (set(trials["trial_id"]) if "trial_id" in trials else set())
    trials, skipped = select_trials(trials, history, bad_trials, history_ids | set(bad_history))
    not_started = [t for t in not_started if t not in row_ids]
    skipped = sorted(skipped + [(t, "not_started", "in the grid (sweep.json) but no result "
                                 "file yet") for t in not_started])
    warnings = grid_warnings + [f"trial {t}: history not usable ({r}); its dynamics are not plotted"
                for t, r in sorted(bad_history.items()) if t in set(trials.get("trial_id", []))]
    n_found = len(row_ids | set(bad_trials) | set(bad_history)) + len(not_started)
    if trials.empty:
        reasons = "; ".join(f"{t}: {r}" for t, _, r in skipped[:5])
        raise ResultsError(f"no usable trials under {uri} ({n_found} found, all skipped: "
                           f"{reasons}{' ...' if len(skipped) > 5 else ''})")
    if not history.empty:
        history = history[history["trial_id"].isin(trials["trial_id"])].reset_index(drop=True)
    return Results(uri, add_derived(trials), history, skipped, warnings, n_found)


def select_trials(trials: pd.DataFrame, history: pd.DataFrame, bad: dict[str, str],
                  history_ids: set[str]) -> tuple[pd.DataFrame, list[tuple[str, str, str]]]:
    """Completed and diverged trials; every other trial as (id, kind, reason) it was skipped."""
    skipped = [(t, "unreadable", r) for t, r in sorted(bad.items())]
    if trials.empty:
        trials = pd.DataFrame({"trial_id": pd.Series(dtype=str), "status": pd.Series(dtype=str)})
    if "status" not in trials:
        trials["status"] = np.where(trials.get("diverged", False) == True, "diverged", "completed")  # noqa: E712
    status = trials["status"].fillna("unknown").astype(str)
    for row in trials[~status.isin(USED_STATUSES)].itertuples():
        error = getattr(row, "error", None)
        skipped.append((row.trial_id, str(row.status),
                        f"status {row.status}" + (f": {error}" if error else "")))
    no_error = status.eq("completed") & trials.get("test_error", pd.Series(np.nan, trials.index)).isna()
    skipped += [(t, "no_test_error", "completed but test_error is missing")
                for t in trials.loc[no_error, "trial_id"]]
    keep = status.isin(USED_STATUSES) & ~no_error
    known = set(trials["trial_id"]) | set(bad)
    for trial_id in sorted(history_ids - known):
        skipped.append((trial_id, "running", f"still running or lost: "
                        f"{_progress(history, trial_id)}, no final row in trials/"))
    return trials[keep].sort_values("trial_id").reset_index(drop=True), sorted(skipped)


def _progress(history: pd.DataFrame, trial_id: str) -> str:
    """'k of N epochs' for a trial with history rows only."""
    rows = history[history["trial_id"] == trial_id] if not history.empty else history
    if rows.empty:
        return "history unreadable"
    return f"{int(rows['epoch'].max())} of {int(rows['epochs'].iloc[0])} epochs"


@functools.cache
def momentum_of(optimizer: str) -> float:
    """The momentum the trainer uses for this optimizer (from TrialConfig, one source)."""
    return TrialConfig(optimizer=optimizer).momentum


def budget_steps(trials: pd.DataFrame) -> pd.Series:
    """Optimizer steps the full training budget allows: steps_per_epoch * epochs.

    steps_per_epoch is the recorded value; for trials without it (diverged in epoch 1) it is
    l2bn.budget's, as the trainer computes it.
    """
    recorded = trials.get("steps_per_epoch", pd.Series(np.nan, trials.index)).astype(float)
    data = trials.get("data", pd.Series("cifar10", trials.index)).fillna("cifar10")
    n_train = trials.get("n_train", pd.Series(np.nan, trials.index)).astype(float)
    computed = pd.Series([budget.budget_steps(d, None if np.isnan(n) else int(n), int(b), 1)
                          for d, n, b in zip(data, n_train, trials["batch_size"], strict=True)],
                         index=trials.index, dtype=float)
    return recorded.fillna(computed) * trials["epochs"].astype(float)


def add_derived(trials: pd.DataFrame) -> pd.DataFrame:
    """Columns every check and plot uses: diverged flag, error for fits, theory predictions."""
    out = trials.copy()
    out["diverged_final"] = out["status"].eq("diverged")
    test_error = out.get("test_error", pd.Series(np.nan, out.index)).astype(float)
    out["error_plot"] = np.where(out["diverged_final"], CHANCE_ERROR, test_error)
    out["momentum"] = [momentum_of(o) for o in out["optimizer"]]
    out["budget_steps"] = budget_steps(out)
    out["eff_lr_proxy"] = np.nan
    out["relax_steps"] = np.nan
    for opt, idx in out.groupby("optimizer").groups.items():
        lr, l2 = out.loc[idx, "lr"].to_numpy(float), out.loc[idx, "l2"].to_numpy(float)
        out.loc[idx, "eff_lr_proxy"] = theory.effective_lr_proxy(opt, lr, l2)
        out.loc[idx, "relax_steps"] = relaxation(out.loc[idx], opt)
    out["setting"] = setting_labels(out)
    out["cell"] = out["optimizer"] + "/" + out["norm"] + "/" + out["update"] + out["setting"]
    return out


def relaxation(trials: pd.DataFrame, optimizer: str) -> np.ndarray:
    """theory.slowest_relaxation_steps per trial; Adam's from each conv layer's measured
    gradient norm at unit weight norm (last epoch), the SGD form where one is missing."""
    grads = layer_columns("grad_norm_unit", CONV_LAYERS)
    per_layer = ({layer: trials[g].to_numpy(float) for layer, g in zip(CONV_LAYERS, grads, strict=True)}
                 if all(g in trials for g in grads) else None)
    return theory.slowest_relaxation_steps(
        optimizer, trials["lr"].to_numpy(float), trials["l2"].to_numpy(float),
        trials["width"].to_numpy(float), trials["norm"].to_numpy(), per_layer,
        momentum_of(optimizer))


def setting_labels(trials: pd.DataFrame) -> pd.Series:
    """', width=64' style suffix naming the SETTING_COLUMNS that vary (empty when none do)."""
    varying = [c for c in SETTING_COLUMNS
               if c in trials and trials[c].astype(str).nunique() > 1]
    labels = pd.Series("", index=trials.index)
    for c in varying:
        labels = labels + f", {c}=" + trials[c].astype(str)
    return labels

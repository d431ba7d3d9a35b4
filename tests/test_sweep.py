"""The sweep runner: Parquet results, progress, and (slow) real Ray Tune runs on real CIFAR-10."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow.dataset as ds
import pytest

from l2bn.config import TrialConfig
from l2bn.schema import HISTORY_SCHEMA, TRIALS_SCHEMA
from l2bn.store import ResultStore
from l2bn.train import train
from sweeps.grid import GridError, load_grid
from sweeps.run_grid import SweepOptions, check_same_grid, storage_root

REPO = Path(__file__).resolve().parents[1]
RUN_GRID = [sys.executable, str(REPO / "sweeps" / "run_grid.py")]


@pytest.fixture(scope="module")
def synthetic_rows() -> list[dict]:
    """Two epochs of a tiny real training run on synthetic data."""
    cfg = TrialConfig(data="synthetic", epochs=2, width=4, batch_size=64, device="cpu")
    rows: list[dict] = []
    train(cfg, rows.append)
    return rows


# --- Parquet results ---------------------------------------------------------------------

def test_train_rows_match_the_parquet_schema(synthetic_rows):
    """Drift check: l2bn's row columns are exactly the schema's (plus the sweep name)."""
    keys = set(synthetic_rows[0])
    assert keys == set(HISTORY_SCHEMA.names) - {"sweep"}


def test_history_round_trip_one_row_per_epoch(tmp_path, synthetic_rows):
    store = ResultStore(str(tmp_path), "s")
    store.write_history(synthetic_rows[:1])
    store.write_history(synthetic_rows + [dict(synthetic_rows[1], test_error=0.5)])  # epoch 2 twice
    table = ds.dataset(store.uri("history")).to_table()
    assert table.schema.equals(HISTORY_SCHEMA)
    got = table.to_pylist()
    assert [r["epoch"] for r in got] == [1, 2]
    assert got[0]["test_error"] == synthetic_rows[0]["test_error"]
    assert got[1]["test_error"] == 0.5  # the last write of an epoch wins
    assert got[0]["sweep"] == "s" and got[0]["git_rev"] == synthetic_rows[0]["git_rev"]
    assert os.listdir(tmp_path / "s" / "history") == [f"{got[0]['trial_id']}.parquet"]


def test_trials_files_share_one_schema_and_read_as_one_table(tmp_path, synthetic_rows):
    store = ResultStore(str(tmp_path), "s")
    store.write_trial(synthetic_rows[-1], "completed", wall_time_s=3.5)
    failed_cfg = TrialConfig(data="synthetic", epochs=2, width=4, seed=1)
    store.write_trial({**failed_cfg.to_row(), "trial_id": failed_cfg.trial_id}, "failed",
                      wall_time_s=None, error="DataError: boom")
    # a reader of the directory sees every column, typed, whichever file it opens first
    files = sorted((tmp_path / "s" / "trials").iterdir())
    assert len(files) == 2 and not any(f.name.startswith(".") for f in files)
    for f in files:
        assert ds.dataset(f).schema.equals(TRIALS_SCHEMA)
    df = pd.read_parquet(store.uri("trials")).set_index("trial_id")
    done, failed = df.loc[synthetic_rows[-1]["trial_id"]], df.loc[failed_cfg.trial_id]
    assert (done.status, done.epochs_done, done.wall_time_s) == ("completed", 2, 3.5)
    assert done.test_error == synthetic_rows[-1]["test_error"]
    assert failed.status == "failed" and failed.error == "DataError: boom"
    assert pd.isna(failed.test_error) and failed.seed == 1
    assert store.read_trial(failed_cfg.trial_id)["status"] == "failed"
    assert store.read_trial("000000000000") is None


def test_diverged_trial_counts_only_finished_epochs(tmp_path, synthetic_rows):
    store = ResultStore(str(tmp_path), "s")
    store.write_trial(dict(synthetic_rows[-1], diverged=True), "diverged", wall_time_s=1.0)
    row = store.read_trial(synthetic_rows[-1]["trial_id"])
    assert (row["status"], row["epochs_done"], row["diverged"]) == ("diverged", 1, True)


def test_storage_root_and_grid_fingerprint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage_root("runs") == str(tmp_path / "runs")
    assert storage_root("s3://bucket/sweeps/") == "s3://bucket/sweeps"
    store = ResultStore(str(tmp_path), "smoke")
    opts = SweepOptions(name="smoke", storage=str(tmp_path))
    smoke = load_grid("smoke").configs()
    check_same_grid(store, smoke, opts)  # first run: records the grid
    check_same_grid(store, list(reversed(smoke)), opts)  # same grid: fine
    with pytest.raises(GridError, match="--name"):
        check_same_grid(store, load_grid("smoke", {"epochs": 2}).configs(), opts)


# --- live progress -----------------------------------------------------------------------

def _trial(status: str, epochs: int, done: int = 0):
    cfg = TrialConfig(epochs=epochs).to_row()
    return SimpleNamespace(status=status, config={"group": [cfg]}, last_result={"epoch": done})


def test_progress_line_counts_and_eta():
    pytest.importorskip("ray")
    from sweeps.callbacks import Progress

    trials = [_trial("TERMINATED", 4, 4), _trial("RUNNING", 4, 2), _trial("PENDING", 4),
              _trial("ERROR", 4, 1), _trial("PENDING", 4)]
    progress = Progress()
    progress.t0, progress.epochs0 = 100.0, 0
    line = progress.status_line(trials, now=160.0)
    # 10 of 20 epochs done (errored trials count as finished) in 60 s -> 10 left at 1/6 per s
    assert "1 done, 1 running, 2 pending, 1 failed of 5" in line
    assert "epochs 10/20" in line and "ETA 0:01:00" in line


def test_error_text_is_the_exception_line():
    pytest.importorskip("ray")
    from sweeps.callbacks import _error_text

    trace = "Traceback (most recent call last):\n  File x\nl2bn.data.DataError: /x: no folder\n"
    assert _error_text(SimpleNamespace(get_error=lambda: trace)) == \
        "l2bn.data.DataError: /x: no folder"
    assert "unknown" in _error_text(SimpleNamespace(get_error=lambda: None))


# --- real Ray Tune runs ------------------------------------------------------------------

def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*RUN_GRID, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


def read(storage: Path, name: str, kind: str) -> pd.DataFrame:
    return pd.read_parquet(storage / name / kind)


@pytest.mark.slow
def test_smoke_grid_end_to_end(tmp_path, cifar_dir):
    dry = run_cli("--grid", "smoke", "--dry-run")
    n = int(dry.stdout.split()[0])
    out = run_cli("--grid", "smoke", "--data-dir", str(cifar_dir), "--storage", str(tmp_path),
                  "--num-cpus", "2", "--progress-interval", "60")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"{n} trials: {n} completed" in out.stdout
    assert "ETA" in out.stdout and f"{n} done, 0 running, 0 pending, 0 failed" in out.stdout
    trials, history = read(tmp_path, "smoke", "trials"), read(tmp_path, "smoke", "history")
    assert len(trials) == n and set(trials.status) == {"completed"}
    expected = {c.trial_id: c for c in load_grid("smoke", {"data_dir": str(cifar_dir)}).configs()}
    assert set(trials.trial_id) == set(expected)
    for row in trials.to_dict("records"):
        cfg = expected[row["trial_id"]].to_row()
        assert {k: None if pd.isna(row[k]) else row[k] for k in cfg} == cfg
        assert row["test_error"] < 0.95 and row["wall_time_s"] > 0
        assert row["git_rev"] and row["torch_version"] and row["device_name"].startswith("cpu")
    epochs = {c.trial_id: c.epochs for c in expected.values()}
    assert len(history) == sum(epochs.values())
    assert not history.duplicated(["trial_id", "epoch"]).any()


TINY_GRID = """
name: tiny
fixed: {data: cifar10, epochs: 2, n_train: 256, n_test: 500, width: 8, batch_size: 64}
axes:
  optimizer: [sgd, adam]
  lr: {by: optimizer, sgd: [0.1], adam: [0.003]}
  update: [l2, projection]
"""


@pytest.mark.slow
def test_resume_after_sigkill_finishes_the_rest_and_reruns_nothing(tmp_path, cifar_dir):
    grid = tmp_path / "tiny.yaml"
    grid.write_text(TINY_GRID)
    storage = tmp_path / "runs"
    cmd = [*RUN_GRID, "--grid", str(grid), "--data-dir", str(cifar_dir), "--storage",
           str(storage), "--num-cpus", "2"]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    trials_dir = storage / "tiny" / "trials"
    deadline = time.monotonic() + 240
    while not list(trials_dir.glob("*.parquet")) and time.monotonic() < deadline:
        assert first.poll() is None, first.stdout.read().decode()[-3000:]
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and everything it started
    first.wait(timeout=60)
    finished_before = {p.name: p.stat().st_mtime_ns for p in trials_dir.glob("*.parquet")}
    history_before = {p.name: p.stat().st_mtime_ns
                      for p in (storage / "tiny" / "history").glob("*.parquet")
                      if p.name in finished_before}
    assert 1 <= len(finished_before) < 4, "kill came too late to test resuming"

    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming sweep 'tiny'" in second.stdout
    trials, history = read(storage, "tiny", "trials"), read(storage, "tiny", "history")
    assert len(trials) == 4 and set(trials.status) == {"completed"}
    assert len(history) == 4 * 2 and not history.duplicated(["trial_id", "epoch"]).any()
    # trials finished before the kill were not run again: their files were not rewritten
    for name, mtime in finished_before.items():
        assert (trials_dir / name).stat().st_mtime_ns == mtime, name
    for name, mtime in history_before.items():
        assert (storage / "tiny" / "history" / name).stat().st_mtime_ns == mtime, name


FAILING_GRID = """
name: failing
fixed: {epochs: 1, width: 4, batch_size: 64, data_dir: DATA_DIR}
axes:
  data: [synthetic, cifar10]
"""


@pytest.mark.slow
def test_a_failing_trial_gets_a_failed_row_and_exit_1(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    grid = tmp_path / "failing.yaml"
    grid.write_text(FAILING_GRID.replace("DATA_DIR", str(empty)))
    out = run_cli("--grid", str(grid), "--storage", str(tmp_path / "runs"), "--num-cpus", "2",
                  "--max-failures", "0")
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    trials = read(tmp_path / "runs", "failing", "trials").set_index("data")
    assert trials.loc["synthetic", "status"] == "completed"
    failed = trials.loc["cifar10"]
    assert failed.status == "failed" and "DataError" in failed.error and str(empty) in failed.error
    assert failed.torch_version and failed.git_rev


FUSED_GRID = """
name: fused
fixed: {data: synthetic, epochs: 2, width: 4, batch_size: 64, n_test: 128, device: cpu}
axes:
  lr: [0.02, 0.05]
  l2: [0, 1e-3]
"""


@pytest.mark.slow
def test_fused_group_is_one_tune_trial_with_a_row_per_grid_point(tmp_path):
    grid = tmp_path / "fused.yaml"
    grid.write_text(FUSED_GRID)
    dry = run_cli("--grid", str(grid), "--dry-run", "--fuse", "4")
    assert "1 Tune trials of 4-4 models each" in dry.stdout
    out = run_cli("--grid", str(grid), "--storage", str(tmp_path / "runs"), "--num-cpus", "2",
                  "--fuse", "4")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trials, history = read(tmp_path / "runs", "fused", "trials"), read(tmp_path / "runs", "fused", "history")
    configs = load_grid(str(grid)).configs()
    assert sorted(trials.trial_id) == sorted(c.trial_id for c in configs)
    assert set(trials.status) == {"completed"} and len(history) == 4 * 2
    alone = train(configs[3])  # the same grid point trained unfused
    row = trials.set_index("trial_id").loc[configs[3].trial_id]
    # Another process and thread count: float32 rounding differs and 16 steps amplify it
    # (tests/test_fused.py holds the exact check); a wrong lr or l2 would miss by far more.
    assert row.test_loss == pytest.approx(alone["test_loss"], rel=2e-2)
    assert row.conv2_w_norm == pytest.approx(alone["conv2_w_norm"], rel=2e-2)

"""The sweep runner: Parquet results, progress, and (slow) real Ray Tune runs on real CIFAR-10."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow.dataset as ds
import pytest
from conftest import REPO, comparable

from l2bn.config import TrialConfig
from l2bn.grid import groups, load_grid
from l2bn.schema import HISTORY_SCHEMA, TRIALS_SCHEMA
from l2bn.store import ResultStore
from l2bn.train import Trial, train
from sweeps.errors import SweepError
from sweeps.run_grid import SweepOptions, check_same_grid, storage_root

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
    with pytest.raises(SweepError, match="--name"):
        check_same_grid(store, load_grid("smoke", {"epochs": 2}).configs(), opts)


# --- live progress -----------------------------------------------------------------------

def _trial(status: str, epochs: int, done: int = 0, trial_id: str = ""):
    cfg = TrialConfig(epochs=epochs).to_row()
    return SimpleNamespace(status=status, config={"group": [cfg]}, last_result={"epoch": done},
                           trial_id=trial_id or f"t{id(cfg)}")


def test_progress_line_counts_and_eta():
    pytest.importorskip("ray")
    from sweeps.callbacks import Progress

    trials = [_trial("TERMINATED", 4, 4), _trial("RUNNING", 4, 2, "r"), _trial("PENDING", 4),
              _trial("ERROR", 4, 1), _trial("PENDING", 4)]
    progress = Progress()
    progress.reporting.add("r")
    progress.t0, progress.epochs0 = 100.0, 0
    line = progress.status_line(trials, now=160.0)
    # finished epochs only: 4 + 2 + 1 = 7 of 20 in 60 s; the failed trial's 3 unrun epochs
    # will never run, so 10 are left at 7/60 per s -> 85.7 s
    assert "1 done, 1 running, 0 starting, 2 pending, 1 failed of 5" in line
    assert "epochs 7/20" in line and "ETA 0:01:26" in line


def test_progress_counts_a_picked_up_trial_as_starting_until_it_reports():
    """A reused worker takes the next trial at once (status RUNNING): not 'running' until it
    reports an epoch, and again 'starting' after a retry."""
    pytest.importorskip("ray")
    from sweeps.callbacks import Progress

    progress = Progress()
    done, nxt = _trial("TERMINATED", 2, 2, "a"), _trial("RUNNING", 2, 0, "b")
    progress.t0 = 0.0
    assert "1 done, 0 running, 1 starting, 0 pending" in progress.status_line([done, nxt], 1.0)
    progress.on_trial_result(0, [], nxt, {"epoch": 1})
    assert "1 done, 1 running, 0 starting" in progress.status_line([done, nxt], 1.0)
    progress.on_trial_recover(0, [], nxt)
    assert "0 running, 1 starting" in progress.status_line([done, nxt], 1.0)


def test_progress_of_failed_trials_counts_no_unfinished_epochs():
    """8 trials that failed before any epoch: 'epochs 0/8', nothing left to wait for."""
    pytest.importorskip("ray")
    from sweeps.callbacks import Progress

    progress = Progress()
    progress.t0 = 0.0
    line = progress.status_line([_trial("ERROR", 1, 0) for _ in range(8)], 66.0)
    assert "0 done, 0 running, 0 starting, 0 pending, 8 failed of 8" in line
    assert "epochs 0/8" in line and "ETA 0:00:00" in line


def test_failed_row_survives_an_unreadable_history_file(tmp_path, capsys):
    """A corrupt history file must not raise inside the driver callback: the failed row is
    written from the config, and a warning names the file."""
    pytest.importorskip("ray")
    from sweeps.callbacks import FailedTrialWriter

    cfg = TrialConfig(data="synthetic", epochs=2, width=4)
    store = ResultStore(str(tmp_path), "s")
    history = tmp_path / "s" / "history" / f"{cfg.trial_id}.parquet"
    history.parent.mkdir(parents=True)
    history.write_bytes(b"PAR1 this is not parquet")
    trial = SimpleNamespace(config={"group": [cfg.to_row()]}, error_file=None,
                            get_error=lambda: "ValueError: boom")
    FailedTrialWriter(store).on_trial_error(0, [], trial)
    row = store.read_trial(cfg.trial_id)
    assert row["status"] == "failed" and row["error"] == "ValueError: boom"
    assert row["epoch"] is None and row["torch_version"]
    err = capsys.readouterr().err
    assert "warning:" in err and str(history) in err and "unreadable" in err


def test_corrupt_sweep_json_is_one_clear_error(tmp_path):
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "sweep.json").write_text('{"trial_ids": [')
    store = ResultStore(str(tmp_path), "smoke")
    opts = SweepOptions(name="smoke", storage=str(tmp_path))
    with pytest.raises(SweepError, match="sweep.json is not valid JSON.*--name"):
        check_same_grid(store, load_grid("smoke").configs(), opts)


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
    # --fuse auto (the default) may train several grid points per Tune trial: progress counts those
    tune_trials = int(re.search(r"as (\d+) Tune trials", out.stdout).group(1))
    fuse = json.loads((tmp_path / "smoke" / "sweep.json").read_text())["options"]["fuse"]
    assert tune_trials == len(groups(load_grid("smoke").configs(), fuse))
    assert "ETA" in out.stdout
    assert f"{tune_trials} done, 0 running, 0 starting, 0 pending, 0 failed" in out.stdout
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


# --- no data: a clear error, fast ----------------------------------------------------------

OFFLINE = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "no_proxy": "", "NO_PROXY": ""}  # port 9 refuses: an offline machine, deterministic


def test_failed_download_is_one_data_error_line(tmp_path, monkeypatch):
    from l2bn.data import DataError, download_cifar10

    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(DataError) as info:
        download_cifar10(tmp_path / "cache")
    msg = str(info.value)
    assert "\n" not in msg and "--data-dir" in msg and str(tmp_path / "cache") in msg


def test_offline_without_data_dir_exits_2_in_seconds_before_any_trial(tmp_path):
    env = {**os.environ, **OFFLINE, "L2BN_CACHE": str(tmp_path / "cache")}
    start = time.monotonic()
    out = subprocess.run([*RUN_GRID, "--grid", "smoke", "--storage", str(tmp_path / "runs")],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    took = time.monotonic() - start
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: CIFAR-10 is not in the cache")
    assert "--data-dir" in errors[0] and str(tmp_path / "cache") in errors[0]
    assert "Traceback" not in out.stdout + out.stderr
    assert not (tmp_path / "runs" / "smoke" / "trials").exists()  # no trial started
    assert took < 45, f"took {took:.0f} s"


# --- resume with changed flags -------------------------------------------------------------

ONE_GRID = """
name: one
fixed: {data: cifar10, epochs: 1, n_train: 256, n_test: 500, width: 4, batch_size: 64}
axes:
  lr: [0.1]
"""


def _attempts(stderr: str) -> int:
    """Failed attempts of a run, from Tune's one log line per failed attempt."""
    return stderr.count("Trial task failed for trial")


@pytest.mark.slow
def test_resume_applies_changed_flags_and_refuses_a_changed_fuse(tmp_path):
    """The first run fails (a --data-dir without the batch files, no retries); rerunning it
    with new --max-failures, --cpus-per-trial, --progress-interval and --data-dir uses them,
    not the first run's; a new --fuse is refused in one line."""
    grid = tmp_path / "one.yaml"
    grid.write_text(ONE_GRID)
    broken = []
    for name in ("b1", "b2"):
        (tmp_path / name / "cifar-10-batches-py").mkdir(parents=True)
        broken.append(str(tmp_path / name))
    base = ["--grid", str(grid), "--storage", str(tmp_path / "runs"), "--num-cpus", "2"]
    first = run_cli(*base, "--data-dir", broken[0], "--max-failures", "0", "--cpus-per-trial", "1")
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert _attempts(first.stderr) == 1
    # Tune's log of the failed attempt is one line, not the worker's traceback
    assert "Traceback" not in first.stdout + first.stderr and "DataError" in first.stderr

    second = run_cli(*base, "--data-dir", broken[1], "--max-failures", "2",
                     "--cpus-per-trial", "2", "--progress-interval", "7")
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming sweep 'one'" in second.stdout and "0 of 1 trials finished" in second.stdout
    for change in ("--max-failures: 0 -> 2", "--cpus-per-trial: 1.0 -> 2.0",
                   "--progress-interval: 30.0 -> 7.0",
                   f"--data-dir/--set device: {{'data_dir': '{broken[0]}'}} -> "
                   f"{{'data_dir': '{broken[1]}'}}"):
        assert f"resume applies {change}" in second.stdout
    assert _attempts(second.stderr) == 3  # the new budget: 1 try + 2 retries
    # the failure callback wrote the row with this run's --data-dir
    failed = read(tmp_path / "runs", "one", "trials").iloc[0]
    assert failed.status == "failed" and failed.data_dir == broken[1]
    assert broken[1] in failed.error

    third = run_cli(*base, "--data-dir", broken[1], "--fuse", "2")
    assert third.returncode == 2, third.stdout[-3000:] + third.stderr[-3000:]
    errors = [ln for ln in third.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
    assert len(errors) == 1 and "--fuse 2 differs from the 1 the sweep 'one'" in errors[0]


def test_resume_refuses_a_changed_fuse_and_applies_the_other_options(tmp_path):
    """A group's checkpoints hold its members: another --fuse is one clear error; other
    options (resources included) are applied and named."""
    from sweeps.resume import resume_changes

    store = ResultStore(str(tmp_path), "s")
    first = SweepOptions(name="s", storage=str(tmp_path), fuse=1)
    assert resume_changes(store, first) == []  # first run: records its options
    assert resume_changes(store, SweepOptions(name="s", storage=str(tmp_path), fuse=1,
                                              max_failures=0, gpus_per_trial=0.5)) == [
        "--max-failures: 2 -> 0", "--gpus-per-trial: 0.0 -> 0.5"]
    with pytest.raises(SweepError, match=r"--fuse auto differs from the 1 the sweep 's' started with"):
        resume_changes(store, SweepOptions(name="s", storage=str(tmp_path), fuse=None))
    assert store.read_meta()["options"]["gpus_per_trial"] == 0.5  # the refused run recorded nothing


GROUP_GRID = """
name: group
fixed: {data: synthetic, epochs: 4, width: 4, batch_size: 64, n_test: 128, device: cpu}
axes:
  lr: [0.02, 0.05]
"""


def _checkpoint(folder: Path, trial_ids: list[str], epoch: int) -> None:
    folder.mkdir(parents=True)
    (folder / "state.pt").write_bytes(b"")
    (folder / "group.json").write_text(json.dumps({"trial_ids": trial_ids, "epoch": epoch}))


def test_unfinished_groups_and_their_latest_checkpoints(tmp_path, synthetic_rows):
    """Groups with a finished row for every member are skipped; each other group's latest
    checkpoint (highest epoch over the checkpoints anywhere under the sweep's folder, whole
    ones of exactly its members) is the one a resume continues from."""
    import torch

    from l2bn.grid import group_name
    from sweeps.resume import latest_checkpoints, unfinished_groups

    grid = tmp_path / "g.yaml"
    grid.write_text(GROUP_GRID.replace("lr: [0.02, 0.05]", "lr: [0.02, 0.05]\n  l2: [0, 1e-3]"))
    configs = load_grid(str(grid)).configs()
    store = ResultStore(str(tmp_path), "s")
    done = configs[0]
    store.write_trial({**synthetic_rows[-1], **done.to_row(), "trial_id": done.trial_id}, "completed",
                      wall_time_s=1.0)
    todo = unfinished_groups(store, configs, fuse=1)
    assert [g[0].trial_id for g in todo] == [c.trial_id for c in configs[1:]]
    pair = unfinished_groups(store, configs, fuse=2)  # one member finished: the group runs
    assert len(pair) == 2 and pair[0][0] is configs[0]

    a, b = configs[1].trial_id, configs[2].trial_id
    sweep = tmp_path / "s"
    _checkpoint(sweep / f"{a}_1111_00000" / "checkpoint_000003", [a], 3)  # an earlier run
    _checkpoint(sweep / f"{a}_2222_00000" / "checkpoint_000000", [a], 5)  # the latest run
    _checkpoint(sweep / f"{a}_2222_00000" / "checkpoint_000001", [a, b], 9)  # not its members
    (sweep / f"{a}_3333_00000" / "checkpoint_000000").mkdir(parents=True)  # cut short
    _checkpoint(sweep / f"{done.trial_id}_1111_00001" / "checkpoint_000000", [done.trial_id], 4)
    for index in (2, 1):  # before group.json: members and epoch from state.pt itself
        folder = sweep / f"{b}_0000_00002" / f"checkpoint_00000{index}"
        folder.mkdir(parents=True)
        torch.save({"state": {"trial_ids": [b], "epoch": 3 - index}, "wall_time_s": 0.0},
                   folder / "state.pt")
    found = latest_checkpoints(store, todo)
    assert found == {group_name([a]): f"{sweep}/{a}_2222_00000/checkpoint_000000",
                     group_name([b]): f"{sweep}/{b}_0000_00002/checkpoint_000001"}


def test_checkpoints_are_found_after_tune_folders_are_renamed(tmp_path):
    """A real group checkpoint (GroupRun, Epoch.save) in trial folders renamed by hand (or
    by a tool) and nested deeper: the latest epoch is found by the project's own files and
    the group continues after it, its members and wall time restored."""
    from l2bn.grid import group_name
    from l2bn.run import GroupRun
    from sweeps.resume import latest_checkpoints

    cfgs = [TrialConfig(data="synthetic", device="cpu", width=4, batch_size=32, n_train=64,
                        n_test=32, epochs=3, lr=lr, seed=0) for lr in (0.05, 0.1)]
    store = ResultStore(str(tmp_path), "s")
    sweep = tmp_path / "s"
    folders = {1: sweep / "renamed by hand" / "first", 2: sweep / "archive" / "x" / "y"}

    def save(epoch) -> None:
        folders[epoch.epoch].mkdir(parents=True)
        epoch.save(str(folders[epoch.epoch]))
        return "enough" if epoch.epoch == 2 else None

    GroupRun(Trial(cfgs)).run(save)
    found = latest_checkpoints(store, [cfgs, cfgs[:1]])
    assert found == {group_name([c.trial_id for c in cfgs]): str(folders[2])}
    run = GroupRun.open(cfgs, store, checkpoint=found[group_name([c.trial_id for c in cfgs])],
                        fs=store.fs)
    assert run.trial.epoch == 2 and run.wall_before > 0
    assert [len(h) for h in run.trial.histories] == [2, 2]
    assert [r["epoch"] for r in run.trial.histories[0]] == [1, 2]


def _group_error(store: ResultStore, cfgs: list[TrialConfig]) -> None:
    """FailedTrialWriter told that the Tune trial of `cfgs` errored after all its retries."""
    from sweeps.callbacks import FailedTrialWriter

    trial = SimpleNamespace(config={"group": [c.to_row() for c in cfgs]}, error_file=None,
                            get_error=lambda: "RuntimeError: CUDA error: out of memory")
    FailedTrialWriter(store).on_trial_error(0, [], trial)


def _summary(store: ResultStore, rows: list[dict], cfg: TrialConfig, status: str, wall: float) -> None:
    """A summary row of `status` for `cfg` from the last of `rows` (a real run's)."""
    row = {**rows[-1], **cfg.to_row(), "trial_id": cfg.trial_id, "diverged": status == "diverged"}
    store.write_trial(row, status, wall_time_s=wall)


def test_diverged_trials_are_finished_on_resume(tmp_path, synthetic_rows):
    """A diverged row counts as finished like a completed one: a group whose members all
    diverged is skipped by a resume, a failed member is not finished, and a later error of a
    group does not turn its diverged rows into failed ones."""
    pytest.importorskip("ray")
    from sweeps.resume import unfinished_groups

    grid = tmp_path / "g.yaml"
    grid.write_text(GROUP_GRID.replace("lr: [0.02, 0.05]", "lr: [0.02, 0.05]\n  l2: [0, 1e-3]"))
    configs = load_grid(str(grid)).configs()
    store = ResultStore(str(tmp_path), "s")
    first, second = groups(configs, 2)
    for cfg in first:
        _summary(store, synthetic_rows, cfg, "diverged", 1.0)
    _summary(store, synthetic_rows, second[0], "diverged", 1.0)
    store.write_trial({**second[1].to_row(), "trial_id": second[1].trial_id}, "failed",
                      wall_time_s=None, error="RuntimeError: boom")
    ids = [c.trial_id for c in configs]
    assert store.finished(ids) == {first[0].trial_id, first[1].trial_id, second[0].trial_id}
    assert unfinished_groups(store, configs, fuse=2) == [second]
    assert [g[0].trial_id for g in unfinished_groups(store, configs, fuse=1)] == [second[1].trial_id]
    before = {i: store.read_trial(i) for i in ids}
    _group_error(store, first)
    _group_error(store, second)
    after = {i: store.read_trial(i) for i in ids}
    assert {i: r["status"] for i, r in after.items()} == {
        first[0].trial_id: "diverged", first[1].trial_id: "diverged",
        second[0].trial_id: "diverged", second[1].trial_id: "failed"}
    for cfg in (*first, second[0]):
        assert comparable(after[cfg.trial_id]) == comparable(before[cfg.trial_id])
    assert after[second[1].trial_id]["error"] == "RuntimeError: CUDA error: out of memory"


def test_a_sweeps_finished_files_copied_elsewhere_continue_it_there(tmp_path, synthetic_rows):
    """docs/sweeps.md "Moving a sweep": the trials/ and history/ files of a finished group,
    copied without sweep.json or checkpoints into another storage, make a new sweep there that
    skips that group, reads its rows back unchanged and runs only the other group."""
    pytest.importorskip("ray")
    import shutil

    from sweeps.resume import unfinished_groups

    grid = tmp_path / "g.yaml"
    grid.write_text(GROUP_GRID.replace("lr: [0.02, 0.05]", "lr: [0.02, 0.05]\n  l2: [0, 1e-3]"))
    configs = load_grid(str(grid)).configs()
    old = ResultStore(str(tmp_path / "old"), "s")
    opts = SweepOptions(name="s", storage=str(tmp_path / "old"), fuse=2)
    assert check_same_grid(old, configs, opts) is None
    first, second = groups(configs, 2)
    for cfg in first:
        _summary(old, synthetic_rows, cfg, "completed", 1.0)
        old.write_history([{**r, **cfg.to_row(), "trial_id": cfg.trial_id} for r in synthetic_rows])
    old.write_history([{**synthetic_rows[0], **second[0].to_row(), "trial_id": second[0].trial_id}])
    new_root = tmp_path / "new" / "s"
    for kind in ("trials", "history"):
        (new_root / kind).mkdir(parents=True)
        for cfg in first:
            shutil.copy(Path(old.path(kind, cfg.trial_id)), new_root / kind)
    new = ResultStore(str(tmp_path / "new"), "s")
    assert check_same_grid(new, configs, SweepOptions(name="s", storage=str(tmp_path / "new"),
                                                      fuse=2)) is None  # a new sweep.json
    assert new.read_meta()["n_trials"] == len(configs)
    assert unfinished_groups(new, configs, fuse=2) == [second]
    for cfg in first:
        assert comparable(new.read_trial(cfg.trial_id)) == comparable(old.read_trial(cfg.trial_id))
        assert len(new.read_history(cfg.trial_id)) == len(synthetic_rows)


def test_a_failed_group_keeps_the_rows_of_its_finished_members(tmp_path, synthetic_rows):
    """A group of three errors after all its retries: the member that completed and the one
    that diverged keep their rows as they were; only the unfinished one gets a failed row,
    from its last history row (epoch 1)."""
    pytest.importorskip("ray")
    cfgs = [TrialConfig(data="synthetic", epochs=2, width=4, batch_size=64, device="cpu", lr=lr)
            for lr in (0.02, 0.05, 0.1)]
    done, diverged, unfinished = cfgs
    store = ResultStore(str(tmp_path), "s")
    _summary(store, synthetic_rows, done, "completed", 3.0)
    _summary(store, synthetic_rows, diverged, "diverged", 2.0)
    store.write_history([{**synthetic_rows[0], **unfinished.to_row(), "trial_id": unfinished.trial_id}])
    before = {c.trial_id: store.read_trial(c.trial_id) for c in cfgs}
    assert before[unfinished.trial_id] is None
    _group_error(store, cfgs)
    after = {c.trial_id: store.read_trial(c.trial_id) for c in cfgs}
    for cfg, status, wall in ((done, "completed", 3.0), (diverged, "diverged", 2.0)):
        row = after[cfg.trial_id]
        assert (row["status"], row["error"], row["wall_time_s"]) == (status, None, wall)
        assert comparable(row) == comparable(before[cfg.trial_id])  # finished_at included
    failed = after[unfinished.trial_id]
    assert (failed["status"], failed["epoch"], failed["epochs_done"], failed["wall_time_s"]) == (
        "failed", 1, 1, None)
    assert failed["error"] == "RuntimeError: CUDA error: out of memory"
    assert failed["test_error"] == synthetic_rows[0]["test_error"] and failed["lr"] == 0.1


@pytest.mark.slow
def test_a_rerun_continues_a_group_from_an_earlier_runs_checkpoint(tmp_path):
    """A checkpoint after epoch 1 left by an earlier run (marked in its history row): the
    rerun trains epochs 2-4 only, its history keeps the marked row, and Tune keeps
    --keep-checkpoints 1 of this run's checkpoints."""
    import torch

    from l2bn.grid import group_name
    from l2bn.train import Trial

    grid = tmp_path / "group.yaml"
    grid.write_text(GROUP_GRID)
    configs = load_grid(str(grid)).configs()
    storage = tmp_path / "runs"
    ids = [c.trial_id for c in configs]
    trial = Trial(configs)
    trial.run_epoch()
    state = trial.state()
    for h in state["histories"]:
        h[0]["time_s"] = 12345.0  # no real epoch takes this long: marks the checkpoint's row
    folder = storage / "group" / "old run, renamed" / "its checkpoint"  # any names: found by its files
    folder.mkdir(parents=True)
    torch.save({"state": state, "wall_time_s": 1.0}, folder / "state.pt")
    (folder / "group.json").write_text(json.dumps({"trial_ids": ids, "epoch": 1}))
    ResultStore(str(storage), "group").write_meta({"trial_ids": sorted(ids), "n_trials": 2})

    out = run_cli("--grid", str(grid), "--storage", str(storage), "--num-cpus", "2",
                  "--fuse", "2", "--keep-checkpoints", "1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "1 Tune trials to run, 1 from a checkpoint" in out.stdout
    history = read(storage, "group", "history").set_index(["trial_id", "epoch"]).sort_index()
    assert len(history) == 2 * 4
    assert list(history["time_s"].xs(1, level="epoch")) == [12345.0, 12345.0]
    assert (history["time_s"].drop(1, level="epoch") < 12345.0).all()
    kept = list((storage / "group").glob(f"{group_name(ids)}_*/checkpoint_*"))
    assert len(kept) == 1, kept  # epochs 2, 3 and 4 checkpointed, one kept


def test_unreadable_checkpoint_restarts_the_group_with_a_warning(tmp_path, capsys):
    """A state.pt cut short (a crash mid-copy) is named in a warning and the group trains from
    its first epoch; an intact one continues after its epoch (every retry failed before)."""
    import torch

    from l2bn.run import GroupRun

    cfgs = [TrialConfig(data="synthetic", device="cpu", width=4, batch_size=32, n_train=64,
                        n_test=32, epochs=3, lr=lr, seed=0) for lr in (0.05, 0.1)]
    trial, store = Trial(cfgs), ResultStore(str(tmp_path), "s")
    trial.run_epoch()
    path = tmp_path / "state.pt"
    torch.save({"state": trial.state(), "wall_time_s": 4.0}, path)
    intact = GroupRun.open(cfgs, store, checkpoint=str(tmp_path))
    assert (intact.trial.epoch, intact.wall_before) == (1, 4.0)
    assert "warning" not in capsys.readouterr().err
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    fresh = GroupRun.open(cfgs, store, checkpoint=str(tmp_path))
    assert (fresh.trial.epoch, fresh.wall_before, len(fresh.trial.cfgs)) == (0, 0.0, 2)
    err = capsys.readouterr().err
    assert err.startswith(f"warning: checkpoint {path} (") and "from its first epoch" in err
    gone = tmp_path / "gone"  # deleted after resume.latest_checkpoints listed it
    assert GroupRun.open(cfgs, store, checkpoint=str(gone)).trial.epoch == 0
    assert capsys.readouterr().err.startswith(f"warning: checkpoint {gone}/state.pt (FileNotFoundError")


@pytest.mark.parametrize("source", ["earlier run", "Tune retry"])
@pytest.mark.parametrize("cut, raised", [(100, "RuntimeError"), (0, "EOFError")])
def test_a_checkpoint_cut_at_its_start_restarts_the_group_with_a_warning(
        tmp_path, capsys, source, cut, raised):
    """A state.pt cut to its first 100 bytes (torch.load: RuntimeError, no zip directory) or to
    nothing (EOFError), from an earlier run (on the store's filesystem) or as Tune's checkpoint
    of a retry (its local copy, as the trainable opens it): named in a warning, the group trains
    from its first epoch, as for a file cut in half."""
    pytest.importorskip("ray")
    import torch
    from ray.tune import Checkpoint

    from l2bn.run import GroupRun

    cfgs = [TrialConfig(data="synthetic", device="cpu", width=4, batch_size=32, n_train=64,
                        n_test=32, epochs=3, lr=lr, seed=0) for lr in (0.05, 0.1)]
    trial, store = Trial(cfgs), ResultStore(str(tmp_path), "s")
    trial.run_epoch()
    folder = tmp_path / "checkpoint_000000"
    folder.mkdir()
    path = folder / "state.pt"
    torch.save({"state": trial.state(), "wall_time_s": 4.0}, path)
    path.write_bytes(path.read_bytes()[:cut])
    assert path.stat().st_size == cut
    if source == "earlier run":
        fresh = GroupRun.open(cfgs, store, checkpoint=str(folder), fs=store.fs)
        named = path
    else:
        with Checkpoint.from_directory(str(folder)).as_directory() as local:
            fresh = GroupRun.open(cfgs, store, checkpoint=local)
        named = f"{local}/state.pt"
    assert (fresh.trial.epoch, fresh.wall_before, [c.lr for c in fresh.trial.cfgs]) == (0, 0.0, [0.05, 0.1])
    err = capsys.readouterr().err
    assert err.startswith(f"warning: checkpoint {named} ({raised}: "), err
    assert "from its first epoch" in err

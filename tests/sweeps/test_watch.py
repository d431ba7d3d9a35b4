"""--tensorboard and --mlflow: what a user watching a run sees, read back from the files
Tune's logger callbacks wrote (TensorBoard event files; an MLflow file store)."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO

GRID = """
name: watched
fixed: {data: synthetic, epochs: 2, width: 4, batch_size: 64, norm: batch}
axes:
  lr: [0.05, 0.1]
"""
# What each epoch must show as a scalar: the headline metrics and per-layer norms and angles.
WATCHED = ("test_error", "train_loss", "conv2_w_norm", "conv2_unit_norm", "conv2_angular_update",
           "conv1_eff_lr")


def read_scalars(event_file: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from a TensorBoard event file (TFRecord framing of Event protos)."""
    from tensorboardX.proto.event_pb2 import Event

    data, out, pos = event_file.read_bytes(), {}, 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = Event.FromString(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4  # length, its crc, the record, its crc
        for v in event.summary.value:
            out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


@pytest.fixture(scope="module")
def watched_sweep(tmp_path_factory) -> tuple[Path, str]:
    """One sweep with both --tensorboard and --mlflow; returns (results dir, mlflow uri)."""
    pytest.importorskip("tensorboardX", reason='the "logging" extra (pip install -e ".[logging]")')
    pytest.importorskip("mlflow", reason='the "logging" extra (pip install -e ".[logging]")')
    tmp = tmp_path_factory.mktemp("watch")
    grid = tmp / "watched.yaml"
    grid.write_text(GRID)
    mlflow_uri = (tmp / "mlruns").as_uri()
    cmd = [sys.executable, str(REPO / "sweeps" / "run_grid.py"), "--grid", str(grid),
           "--storage", str(tmp / "runs"), "--num-cpus", "2", "--tensorboard",
           "--mlflow", mlflow_uri, "--fuse", "1"]  # a run per trial; fused groups: below
    # MLflow 3 keeps its file store only behind this switch (README: use a server or sqlite)
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"}
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return tmp / "runs" / "watched", mlflow_uri


def _history(results: Path) -> pd.DataFrame:
    return pd.read_parquet(results / "history").set_index(["lr", "epoch"]).sort_index()


@pytest.mark.slow
def test_tensorboard_event_files_hold_each_epochs_metrics(watched_sweep):
    results, _ = watched_sweep
    history = pd.read_parquet(results / "history").set_index(["trial_id", "epoch"]).sort_index()
    files = sorted(results.rglob("events.out.tfevents*"))
    assert len(files) == 2, files  # one per trial, in the trial's folder
    for f in files:
        trial_id = f.parent.name.split("_")[0]  # trial folders are <l2bn trial id>_<Tune's id>
        tags = {t.removeprefix("ray/tune/"): v for t, v in read_scalars(f).items()}
        for key in WATCHED:
            assert [s for s, _ in tags[key]] == [1, 2], key  # one scalar per epoch
            assert [v for _, v in tags[key]] == pytest.approx(
                list(history.loc[trial_id][key]), rel=1e-6), key


@pytest.mark.slow
def test_mlflow_runs_hold_params_and_each_epochs_metrics(watched_sweep, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    results, uri = watched_sweep
    history = pd.read_parquet(results / "history").set_index(["trial_id", "epoch"]).sort_index()
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("watched")
    runs = client.search_runs([experiment.experiment_id])
    # one run per trial, named by Tune's trial name: the l2bn trial id
    assert sorted(r.info.run_name for r in runs) == sorted(history.index.levels[0])
    for run in runs:
        lr = float(run.data.params["trial/lr"])  # a group of one: its config as trial/<field>
        assert run.data.params["trial/optimizer"] == "sgd"
        assert history.loc[run.info.run_name]["lr"].iloc[0] == lr
        for key in WATCHED:
            logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            assert [s for s, _ in logged] == [1, 2], key
            assert [v for _, v in logged] == pytest.approx(
                list(history.loc[run.info.run_name][key]), rel=1e-6), key

def test_a_refused_mlflow_uri_is_one_line_before_any_trial(tmp_path):
    pytest.importorskip("mlflow", reason='the "logging" extra (pip install -e ".[logging]")')
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ALLOW_FILE_STORE"}
    cmd = [sys.executable, str(REPO / "sweeps" / "run_grid.py"), "--grid", "smoke",
           "--data-dir", str(tmp_path), "--storage", str(tmp_path / "runs"),
           "--mlflow", (tmp_path / "mlruns").as_uri()]
    (tmp_path / "cifar-10-batches-py").mkdir()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    errors = [ln for ln in out.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
    assert out.returncode == 2 and len(errors) == 1, out.stderr[-3000:]
    assert errors[0].startswith(f"error: --mlflow {(tmp_path / 'mlruns').as_uri()}: ")
    assert "MLFLOW_ALLOW_FILE_STORE" in errors[0]


def test_mlflow_params_name_each_member_of_a_fused_group():
    pytest.importorskip("mlflow", reason='the "logging" extra (pip install -e ".[logging]")')
    from l2bn.config import TrialConfig
    from sweeps.mlflow_logger import group_params

    a, b = TrialConfig(lr=0.1, l2=1e-3), TrialConfig(lr=0.2, l2=1e-2)
    one = group_params({"group": [a.to_row()]})
    assert one["trial/lr"] == 0.1 and one["trial/optimizer"] == "sgd" and len(one) == len(a.to_row())
    two = group_params({"group": [a.to_row(), b.to_row()]})
    assert two[f"{a.trial_id}/lr"] == 0.1 and two[f"{b.trial_id}/l2"] == 1e-2
    assert len(two) == 2 * len(a.to_row())

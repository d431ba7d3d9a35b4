"""Results on object storage: the smoke sweep against a real S3 endpoint on 127.0.0.1 (moto's
server mode), killed and resumed, and the report read from the bucket. The endpoint is
chosen the way the README tells a MinIO/on-prem user to: AWS_ENDPOINT_URL and keys in the
environment, which pyarrow (the sweep's writer, Ray Tune's storage, the analysis) reads."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import REPO

BUCKET = "l2bn-test"


@pytest.fixture
def s3_env(monkeypatch):
    """A moto S3 server on 127.0.0.1 with an empty bucket; the environment pointing at it."""
    pytest.importorskip("moto.server", reason='moto[server] (the "test" extra)')
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield {**os.environ, **env}
    server.stop()


def _objects(prefix: str) -> dict[str, int]:
    """key -> mtime (ns) of the Parquet objects under s3://BUCKET/prefix."""
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(f"s3://{BUCKET}/{prefix}")
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return {i.base_name: i.mtime_ns for i in infos if i.base_name.endswith(".parquet")}


@pytest.mark.slow
def test_smoke_sweep_on_s3_resumes_after_a_kill_and_reports_from_the_bucket(s3_env, tmp_path,
                                                                             cifar_dir, capsys):
    from analysis.report import main as report

    storage = f"s3://{BUCKET}/sweeps"
    cmd = [sys.executable, str(REPO / "sweeps" / "run_grid.py"), "--grid", "smoke",
           "--data-dir", str(cifar_dir), "--storage", storage, "--num-cpus", "2"]
    first = subprocess.Popen(cmd, cwd=REPO, env=s3_env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    while not _objects("sweeps/smoke/trials") and time.monotonic() < deadline:
        assert first.poll() is None, first.stdout.read().decode()[-3000:]
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and everything it started
    first.wait(timeout=60)
    finished_before = _objects("sweeps/smoke/trials")
    assert 1 <= len(finished_before) < 8, "kill came too late to test resuming"

    second = subprocess.run(cmd, cwd=REPO, env=s3_env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming sweep 'smoke'" in second.stdout
    after = _objects("sweeps/smoke/trials")
    assert len(after) == 8 and len(_objects("sweeps/smoke/history")) == 8
    for name, mtime in finished_before.items():  # finished trials were not run again
        assert after[name] == mtime, name
    trials = pd.read_parquet(f"{storage}/smoke/trials")  # pandas/pyarrow read the bucket too
    history = pd.read_parquet(f"{storage}/smoke/history")
    assert set(trials.status) == {"completed"} and trials.trial_id.is_unique
    assert len(history) == 8 and not history.duplicated(["trial_id", "epoch"]).any()

    out = tmp_path / "report"
    assert report(["--results", f"{storage}/smoke", "--out", str(out)]) == 0
    summary = json.loads((out / "collapse.json").read_text())["inputs"]
    assert (summary["n_found"], summary["n_used"]) == (8, 8)
    assert (out / "report.html").stat().st_size > 0


def test_a_missing_summary_row_reads_as_none_on_s3_and_locally(s3_env, tmp_path):
    """ResultStore.read_trial opens the file directly (one request): a trial without a row is
    None on object storage as on a local disk, and a written row reads back."""
    from l2bn.config import TrialConfig
    from l2bn.schema import config_columns
    from l2bn.store import ResultStore

    cfg = TrialConfig(data="synthetic")
    for root in (f"s3://{BUCKET}/rows", str(tmp_path)):
        store = ResultStore(root, "s")
        assert store.read_trial(cfg.trial_id) is None
        store.write_trial(config_columns(cfg), "failed", wall_time_s=None, error="x")
        row = store.read_trial(cfg.trial_id)
        assert (row["trial_id"], row["status"], row["error"]) == (cfg.trial_id, "failed", "x")

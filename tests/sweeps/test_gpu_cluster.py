"""The GPU scheduling path on a simulated GPU cluster (ray.cluster_utils.Cluster): a worker node
that declares 2 GPUs, so Ray schedules GPUs and sets CUDA_VISIBLE_DEVICES per trial, while the
training stays on the CPU (`--set device=cpu`). `--fuse auto` with `--gpus-per-trial > 0` puts
one whole lr x l2 group in each Tune trial; a trial holds its GPU share for the whole group."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO

GPUS = 2  # declared by the worker node; its CPUs never bind (one per group and spare)

# 6 groups (norm x seed) of 4 members (lr x l2): more groups than a GPU share lets run at once.
GRID = """
name: gpus
fixed: {data: synthetic, epochs: 3, n_train: 512, n_test: 128, width: 4, batch_size: 64}
axes:
  norm: [batch, layer, weight]
  seed: [0, 1]
  lr: [0.05, 0.1]
  l2: [0, 1e-3]
"""
GROUPS, MEMBERS, EPOCHS = 6, 4, 3
GROUP_AXES = ["norm", "seed"]  # the grid's axes besides lr and l2: one group per value pair


def _intervals(trials: pd.DataFrame) -> pd.DataFrame:
    """Per group: when it trained (finished_at - wall_time_s .. finished_at, inside the time its
    Tune trial held its GPU share) and the CUDA_VISIBLE_DEVICES it saw."""
    end = (trials.finished_at - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    frame = trials[GROUP_AXES].assign(start=end - trials.wall_time_s, end=end,
                                      gpu=trials.cuda_visible_devices)
    return frame.groupby(GROUP_AXES).agg(start=("start", "min"), end=("end", "max"),
                                         gpu=("gpu", "unique"))


def _max_overlap(spans: pd.DataFrame) -> int:
    """The most intervals open at one time (an end before a start at equal times)."""
    events = sorted([(s, 1) for s in spans.start] + [(e, -1) for e in spans.end])
    open_now = peak = 0
    for _, step in events:
        open_now += step
        peak = max(peak, open_now)
    return peak


def _sweep(cluster_address: str, grid: Path, storage: Path, gpus_per_trial: str) -> str:
    cmd = [sys.executable, str(REPO / "sweeps" / "run_grid.py"), "--grid", str(grid),
           "--address", cluster_address, "--storage", str(storage), "--set", "device=cpu",
           "--gpus-per-trial", gpus_per_trial, "--fuse", "auto", "--progress-interval", "60"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out.stdout


@pytest.mark.slow
def test_whole_groups_per_gpu_share_on_a_simulated_gpu_cluster(tmp_path):
    from ray.cluster_utils import Cluster

    grid = tmp_path / "gpus.yaml"
    grid.write_text(GRID)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0})
    try:
        cluster.add_node(num_cpus=GROUPS + 2, num_gpus=GPUS)
        cluster.wait_for_nodes()
        outs = {share: _sweep(cluster.address, grid, tmp_path / share, share)
                for share in ("1", "0.5")}
    finally:
        cluster.shutdown()
    for share, out in outs.items():
        per_gpu = round(1 / float(share))  # groups one GPU runs at once
        assert f"{GROUPS * MEMBERS} trials as {GROUPS} Tune trials of {MEMBERS}-{MEMBERS} models " \
               "each (--fuse auto)" in out
        assert f"{GROUPS * MEMBERS} trials: {GROUPS * MEMBERS} completed" in out
        base = tmp_path / share / "gpus"
        trials = pd.read_parquet(base / "trials")
        history = pd.read_parquet(base / "history")
        # every member's rows exactly once
        assert len(trials) == GROUPS * MEMBERS and trials.trial_id.is_unique
        assert len(history) == GROUPS * MEMBERS * EPOCHS
        assert not history.duplicated(["trial_id", "epoch"]).any()
        # one Tune trial per whole group: its first report counts all its models
        progress = sorted(base.glob("g*/progress.csv"))
        assert len(progress) == GROUPS
        assert [int(pd.read_csv(p)["models"].iloc[0]) for p in progress] == [MEMBERS] * GROUPS
        # each group ran in one process that saw one GPU of the node's two, on all its rows
        spans = _intervals(trials)
        assert len(spans) == GROUPS and all(len(g) == 1 for g in spans.gpu)
        spans["gpu"] = [g[0] for g in spans.gpu]
        assert set(spans.gpu) <= {str(i) for i in range(GPUS)}, spans
        seen = history.groupby(GROUP_AXES).cuda_visible_devices.unique()
        assert all(list(v) == [spans.gpu[key]] for key, v in seen.items())
        # never more groups at once than the declared GPUs allow, in all and on each GPU
        assert _max_overlap(spans) <= GPUS * per_gpu, spans
        for _, on_gpu in spans.groupby("gpu"):
            assert _max_overlap(on_gpu) <= per_gpu, spans

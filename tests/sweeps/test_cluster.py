"""A real multi-node Ray cluster on this machine (ray.cluster_utils.Cluster): a head with 0
CPUs as in cluster.yaml and two 1-CPU worker nodes; the sweep joins it with --address and
survives losing a worker node mid-sweep."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO

# Epochs of 8,192 images (about 1-2 s each here) so that the 1 s wait after a trial's first epoch
# lands inside its second one: with 2,048 images, once training got faster, a whole trial could
# end within that second and the node was lost with nothing left to move.
GRID = """
name: nodes
fixed: {data: cifar10, epochs: 4, n_train: 8192, n_test: 500, width: 8, batch_size: 64}
axes:
  lr: [0.05, 0.1]
  seed: [0, 1]
"""


def _first_history_node(history: Path, deadline: float, proc: subprocess.Popen) -> str:
    """The ray_node_id of the first epoch any trial wrote (polls until one exists)."""
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        for f in history.glob("*.parquet"):
            try:
                return str(pd.read_parquet(f)["ray_node_id"].iloc[0])
            except (OSError, ValueError):  # mid-rename: try again
                pass
        time.sleep(0.2)
    raise AssertionError("no trial finished an epoch in time")


@pytest.mark.slow
def test_sweep_on_a_multinode_cluster_survives_losing_a_worker_node(tmp_path, cifar_dir):
    from ray.cluster_utils import Cluster

    grid = tmp_path / "nodes.yaml"
    grid.write_text(GRID)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        head_id = cluster.head_node.node_id
        cmd = [sys.executable, str(REPO / "sweeps" / "run_grid.py"), "--grid", str(grid),
               "--address", cluster.address, "--data-dir", str(cifar_dir),
               "--storage", str(tmp_path / "runs"), "--progress-interval", "10"]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        lost = _first_history_node(tmp_path / "runs" / "nodes" / "history",
                                   time.monotonic() + 240, proc)
        # kill the node that is training that trial, mid-way through its epoch 2 of 4 (its
        # epoch-1 checkpoint is registered by then)
        time.sleep(1.0)
        cluster.remove_node(next(w for w in workers if w.node_id == lost), allow_graceful=False)
        out, _ = proc.communicate(timeout=300)
    finally:
        cluster.shutdown()
    assert proc.returncode == 0, out[-4000:]
    assert "4 trials: 4 completed" in out
    trials = pd.read_parquet(tmp_path / "runs" / "nodes" / "trials")
    history = pd.read_parquet(tmp_path / "runs" / "nodes" / "history")
    assert len(trials) == 4 and trials.trial_id.is_unique and set(trials.status) == {"completed"}
    assert len(history) == 4 * 4 and not history.duplicated(["trial_id", "epoch"]).any()
    nodes = set(history.ray_node_id)
    survivor = next(w.node_id for w in workers if w.node_id != lost)
    assert lost in nodes and survivor in nodes and head_id not in nodes
    assert nodes <= {w.node_id for w in workers}
    # the trial cut short on the lost node finished its later epochs on the other one
    moved = history[history.ray_node_id == lost].trial_id.unique()
    assert any(set(history[history.trial_id == t].ray_node_id) == {lost, survivor} for t in moved)

"""train(cfg, report): determinism, resume, divergence, the CLI, and one real-data run."""
import math
import subprocess
import sys

import pytest

from l2bn.config import TrialConfig
from l2bn.train import train

SMALL = dict(data="synthetic", device="cpu", width=4, batch_size=64, epochs=2, n_test=128)
VOLATILE = ("epoch_time_s", "time_s", "images_per_s")


def _strip(row):
    """Row without timings, NaN made comparable (NaN != NaN)."""
    def same(v):
        return "nan" if isinstance(v, float) and math.isnan(v) else v
    return {k: same(v) for k, v in row.items() if k not in VOLATILE}


def _run(cfg, **kw):
    rows = []
    final = train(cfg, rows.append, **kw)
    return rows, final


def test_rows_have_config_metrics_and_are_deterministic():
    cfg = TrialConfig(**SMALL, optimizer="momentum", lr=0.05, l2=1e-3)
    rows_a, final = _run(cfg)
    rows_b, _ = _run(cfg)
    assert [r["epoch"] for r in rows_a] == [1, 2] and final == rows_a[-1]
    assert [_strip(r) for r in rows_a] == [_strip(r) for r in rows_b]
    row = rows_a[-1]
    assert row["step"] == 2 * (512 // 64) and row["trial_id"] == cfg.trial_id
    assert {k: row[k] for k in cfg.to_row()} == cfg.to_row()
    for layer in ("conv1", "conv2", "conv3"):
        assert row[f"{layer}_w_norm"] > 0 and 0 < row[f"{layer}_angular_update"] < 1
        # measured effective LR for SGD-family is lr / ||w_u||^2 (mean over units)
        assert row[f"{layer}_eff_lr"] > 0
        assert row[f"{layer}_pred_angular_update"] == pytest.approx(
            math.sqrt(2 * 0.05 * 2e-3 / 1.9))
    assert math.isnan(row["fc_pred_angular_update"])
    assert 0 <= row["test_error"] <= 1 and row["diverged"] is False
    assert row["torch_version"] and row["git_rev"]


def test_resume_from_saved_state_equals_uninterrupted_run():
    cfg = TrialConfig(**{**SMALL, "epochs": 3}, optimizer="adam", lr=1e-3, l2=1e-4, norm="weight")
    states = []
    full, _ = _run(cfg, save_state=states.append)
    assert [s["epoch"] for s in states] == [1, 2, 3]
    resumed, final = _run(cfg, resume=states[0])
    assert [r["epoch"] for r in resumed] == [2, 3]
    assert [_strip(r) for r in resumed] == [_strip(r) for r in full[1:]]
    assert [len(h) for h in states[0]["histories"]] == [1]


def test_divergence_ends_trial_without_raising():
    cfg = TrialConfig(**{**SMALL, "epochs": 5}, optimizer="sgd", lr=1e8, l2=0.0, norm="none")
    rows, final = _run(cfg)
    assert final["diverged"] is True and rows[-1] is final
    assert len(rows) < 5  # stopped at once
    if len(rows) > 1:  # the last finite metrics are carried
        assert math.isfinite(final["test_error"]) and final["test_error"] == rows[-2]["test_error"]


def test_cli_prints_table_and_rejects_bad_flags():
    base = [sys.executable, "-m", "l2bn.train", "--data", "synthetic", "--device", "cpu",
            "--width", "4", "--epochs", "1", "--n-test", "64"]
    ok = subprocess.run(base + ["--norm", "layer", "--update", "projection"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert "test_error" in lines[1] and lines[2].split()[0] == "1"
    bad = subprocess.run(base + ["--norm", "none", "--update", "projection"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "'update'='projection' needs a normalization" in bad.stderr
    missing = subprocess.run(base[:4] + ["cifar10", "--data-dir", "/nonexistent/x"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no 'cifar-10-batches-py' directory" in missing.stderr


@pytest.mark.slow
def test_one_epoch_on_real_cifar_learns(cifar_dir):
    cfg = TrialConfig(optimizer="sgd", lr=0.1, l2=5e-4, norm="batch", update="l2", epochs=1,
                      n_train=2048, data_dir=str(cifar_dir), device="cpu")
    final = train(cfg)
    assert final["train_images"] == 2048 and final["diverged"] is False
    assert final["test_error"] < 0.85, final["test_error"]

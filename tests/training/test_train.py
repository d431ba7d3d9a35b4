"""train(cfg, report): determinism, resume, divergence, the CLI, and one real-data run."""
import math
import subprocess
import sys

import pytest
import torch
from conftest import comparable

import l2bn.train
from l2bn.config import TrialConfig
from l2bn.schema import MEASURED
from l2bn.train import train

SMALL = dict(data="synthetic", device="cpu", width=4, batch_size=64, epochs=2, n_test=128)


def _run(cfg, **kw):
    rows = []
    final = train(cfg, rows.append, **kw)
    return rows, final


def test_rows_have_config_metrics_and_are_deterministic():
    cfg = TrialConfig(**SMALL, optimizer="momentum", lr=0.05, l2=1e-3)
    states = []
    rows_a, final = _run(cfg, save_state=states.append)
    rows_b, _ = _run(cfg)
    assert [r["epoch"] for r in rows_a] == [1, 2] and final == rows_a[-1]
    assert [comparable(r) for r in rows_a] == [comparable(r) for r in rows_b]
    row = rows_a[-1]
    assert row["step"] == 2 * (512 // 64) and row["trial_id"] == cfg.trial_id
    assert {k: row[k] for k in cfg.to_row()} == cfg.to_row()
    # the final weights (model 0 of the checkpoint's stack), to recompute the metrics from
    weights = {name: p[0] for name, p in states[-1]["params"].items()}
    for layer in ("conv1", "conv2", "conv3"):
        w = weights[f"{layer}.conv.weight"].double()
        units = w.flatten(1).norm(dim=1)  # batch norm: one scale group per output channel
        assert row[f"{layer}_w_norm"] == pytest.approx(float(w.norm()), rel=1e-6)
        assert row[f"{layer}_unit_norm"] == pytest.approx(float(units.mean()), rel=1e-6)
        # measured effective LR for SGD-family is lr / ||w_u||^2 (mean over units)
        assert row[f"{layer}_eff_lr"] == pytest.approx(float((0.05 / units**2).mean()), rel=1e-6)
        # radians per step (a cosine would be ~1); exact values: test_layer_metrics_values.py
        assert 0 < row[f"{layer}_angular_update"] < 0.3
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
    assert [comparable(r) for r in resumed] == [comparable(r) for r in full[1:]]
    assert [len(h) for h in states[0]["histories"]] == [1]


def test_divergence_ends_trial_without_raising():
    cfg = TrialConfig(**{**SMALL, "epochs": 5}, optimizer="sgd", lr=1e8, l2=0.0, norm="none")
    rows, final = _run(cfg)
    assert final["diverged"] is True and rows[-1] is final
    assert len(rows) == 1 and final["epoch"] == 1  # blew up in epoch 1: no finite metrics yet
    assert math.isnan(final["test_error"]) and math.isnan(final["train_loss"])


@pytest.mark.parametrize("step, blow_up", [
    (6, "nan"),  # mid epoch 2: the next losses are NaN
    (8, "nan"),  # last step of epoch 2: the loss stays finite, the weights do not
    (6, "huge"),  # finite but the mean training loss exceeds 100 x chance
])
def test_divergence_in_a_later_epoch_keeps_the_last_finite_metrics(monkeypatch, step, blow_up):
    """4 steps per epoch; the classifier is corrupted after the given step (in epoch 2), by
    the real training loop's own path (after_step), and the divergence checks find it."""
    original, count = l2bn.train.after_step, [0]

    def corrupting(model, cfg):
        original(model, cfg)
        count[0] += 1
        if count[0] == step:
            with torch.no_grad():
                if blow_up == "nan":
                    model.params["fc.weight"].fill_(math.nan)
                else:
                    model.params["fc.weight"].mul_(1e6)

    monkeypatch.setattr(l2bn.train, "after_step", corrupting)
    cfg = TrialConfig(**{**SMALL, "epochs": 4, "n_train": 256}, optimizer="sgd", lr=0.05, l2=1e-3)
    states = []
    rows, final = _run(cfg, save_state=states.append)
    assert [r["epoch"] for r in rows] == [1, 2] and final["epoch"] == 2  # stopped in epoch 2
    assert [r["diverged"] for r in rows] == [False, True] and final["diverged"] is True
    # the history row of the diverged epoch measured nothing; the summary carries epoch 1's
    assert all(rows[-1][k] is None or math.isnan(rows[-1][k]) for k in MEASURED)
    assert [s["epoch"] for s in states] == [1]  # no checkpoint of the diverged epoch
    assert math.isfinite(final["test_error"]) and math.isfinite(final["conv2_w_norm"])
    carried = {k: v for k, v in comparable(final).items() if k not in ("epoch", "diverged")}
    assert carried == {k: v for k, v in comparable(rows[0]).items() if k not in ("epoch", "diverged")}


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


def test_eval_last_evaluates_only_the_final_epochs():
    cfg = TrialConfig(**SMALL | {"epochs": 3}, eval_last=2)
    rows, final = _run(cfg)
    assert [math.isnan(r["test_error"]) for r in rows] == [True, False, False]
    every = _run(cfg.replace(eval_last=None))[0]
    # the skipped evaluation changes nothing else: same training, same final test error
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in every]
    assert final["test_error"] == every[-1]["test_error"]
    assert cfg.replace(eval_last=None).trial_id == TrialConfig(**SMALL | {"epochs": 3}).trial_id
    with pytest.raises(ValueError, match="'eval_last' must be None"):
        cfg.replace(eval_last=0)


def test_a_cpu_trial_flushes_subnormal_floats_to_zero():
    """Dead channels decay into subnormal floats, which x86 CPUs compute on ~10x slower: a CPU
    trial turns on flush-to-zero before it trains (and leaves it on for its thread)."""
    torch.set_flush_denormal(False)  # an earlier trial in this process may have turned it on
    tiny = torch.tensor([1e-40])  # below float32's smallest normal, 1.2e-38
    try:
        assert (tiny * 1.0).item() > 0
        l2bn.train.Trial(TrialConfig(**SMALL, optimizer="adam", lr=1e-3, l2=1e-4))
        assert (tiny * 1.0).item() == 0.0
    finally:
        torch.set_flush_denormal(False)

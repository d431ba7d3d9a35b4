"""The Adam diagnostics of the history rows: <layer>_adam_step_rms (RMS of Adam's normalized
step m_hat / (sqrt(v_hat) + eps)) and <layer>_grad_autocorr (mean cosine of successive loss
gradients), per model of a stack, against torch.optim and against the noise/signal limits of
docs/theory.md ("Adam with coupled L2": 0.229 for white gradients, 1 for a constant one)."""
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import close_rows, comparable

from l2bn.config import TrialConfig
from l2bn.metrics import UpdateTracker, layer_metrics
from l2bn.optim import ADAM_EPS, StackedOptimizer
from l2bn.schema import HISTORY, LAYERS, layer_columns
from l2bn.store import ResultStore
from l2bn.theory import ADAM_BETAS, ema_noise_rms
from l2bn.train import Trial

B1, B2 = ADAM_BETAS
SMALL = dict(data="synthetic", device="cpu", width=4, batch_size=64, n_test=128)


def stacked(cfgs: list[TrialConfig], w0: torch.Tensor, decayed: bool = True):
    """A (K, ...) weight `w` with its StackedOptimizer (recording Adam's step) and tracker."""
    w = w0.clone().requires_grad_()
    opt = StackedOptimizer(cfgs, {"w"} if decayed else set(), torch.device("cpu"), watch={"w": "w"})
    return w, opt, UpdateTracker({"w": w}, stacked=True)


def train_step(w, opt, tracker, grad: torch.Tensor) -> None:
    """The trainer's order: loss gradient in .grad, snapshot, optimizer step, update."""
    w.grad = grad.clone()
    tracker.snapshot()
    opt.step({"w": w})
    tracker.update(opt.step_sq)


def columns(cfg: TrialConfig, w: torch.Tensor, tracker: UpdateTracker, pos: int) -> dict:
    """Model `pos`'s row columns of weight `w`, as Trial.run_epoch makes them."""
    means = {k: v[pos].item() if v[pos].dim() == 0 else v[pos].numpy()
             for k, v in tracker.stacked_means()["w"].items()}
    return layer_metrics(cfg, {"w": w.detach()[pos]}, tracker, set(), {"w": means})


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_step_rms_equals_torch_adam_state_per_model(optimizer):
    """Two models, two lrs, L2 on: sqrt(mean over steps and coordinates of
    (m_hat / (sqrt(v_hat) + eps))^2) from torch.optim's exp_avg, exp_avg_sq and step."""
    gen = torch.Generator().manual_seed(0)
    cfgs = [TrialConfig(optimizer=optimizer, lr=lr, l2=0.05) for lr in (1e-3, 3e-2)]
    w0 = torch.randn(2, 6, 5, generator=gen)
    w, opt, tracker = stacked(cfgs, w0)
    cls = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
    refs = [torch.nn.Parameter(w0[k].clone()) for k in range(2)]
    torch_opts = [cls([p], lr=c.lr, betas=ADAM_BETAS, weight_decay=c.weight_decay)
                  for p, c in zip(refs, cfgs, strict=True)]
    sums = np.zeros(2)
    for _ in range(5):
        grad = torch.randn(2, 6, 5, generator=gen) * torch.tensor([1.0, 0.01])[:, None, None]
        train_step(w, opt, tracker, grad)
        for k, (p, o) in enumerate(zip(refs, torch_opts, strict=True)):
            p.grad = grad[k].clone()
            o.step()
            s = o.state[p]
            t = int(s["step"])
            m_hat = s["exp_avg"].double() / (1 - B1**t)
            v_hat = s["exp_avg_sq"].double() / (1 - B2**t)
            sums[k] += float(((m_hat / (v_hat.sqrt() + ADAM_EPS)) ** 2).mean())
    expected = np.sqrt(sums / 5)
    got = [columns(cfgs[k], w, tracker, k)["w_adam_step_rms"] for k in range(2)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert abs(got[0] - got[1]) > 1e-3  # per model: the two lrs' steps differ


def test_white_noise_and_constant_gradients_reach_the_two_limits():
    """Model 0 gets i.i.d. Gaussian gradients: step RMS sqrt((1-b1)/(1+b1)) = 0.229 and no
    autocorrelation; model 1 a constant gradient: m_hat/sqrt(v_hat) = sign(g), RMS 1, and
    autocorrelation 1. Measured over 200 steps after 100 of warm-up (a new epoch), when the
    bias-corrected moments have forgotten their start."""
    gen = torch.Generator().manual_seed(1)
    cfgs = [TrialConfig(optimizer="adam", lr=lr, l2=0.0) for lr in (1e-3, 1e-4)]
    w, opt, tracker = stacked(cfgs, torch.randn(2, 64, 64, generator=gen))
    constant = torch.randn(64, 64, generator=gen)
    for step in range(300):
        if step == 100:
            tracker.reset()
        train_step(w, opt, tracker, torch.stack([torch.randn(64, 64, generator=gen), constant]))
    assert tracker.steps == 200 and tracker.counts["w"]["grad_autocorr"] == 199
    white, signal = (columns(c, w, tracker, k) for k, c in enumerate(cfgs))
    assert ema_noise_rms() == pytest.approx(math.sqrt(0.1 / 1.9))  # 0.229
    assert white["w_adam_step_rms"] == pytest.approx(ema_noise_rms(), rel=0.03)
    assert abs(white["w_grad_autocorr"]) < 0.01  # one cosine: sd 1/64, mean of 199: 1e-3
    assert signal["w_adam_step_rms"] == pytest.approx(1.0, abs=1e-5)
    assert signal["w_grad_autocorr"] == pytest.approx(1.0, abs=1e-5)


def test_autocorrelation_pairs_steps_within_the_epoch():
    """g, -g, g: cosines -1, -1 (mean -1); the epoch's first step has no pair, so a new epoch
    that starts with -g does not pair it with the last epoch's g."""
    g = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(2))
    cfg = TrialConfig(optimizer="sgd", lr=0.1, l2=0.0)
    w, opt, tracker = stacked([cfg], torch.ones(1, 3, 4))
    for sign in (1, -1, 1):
        train_step(w, opt, tracker, sign * g)
    cols = columns(cfg, w, tracker, 0)
    assert cols["w_grad_autocorr"] == pytest.approx(-1.0, abs=1e-6)
    assert math.isnan(cols["w_adam_step_rms"])  # sgd: no Adam step
    tracker.reset()
    train_step(w, opt, tracker, -g)
    assert "grad_autocorr" not in tracker.sums["w"]  # one step: no pair yet
    assert math.isnan(columns(cfg, w, tracker, 0)["w_grad_autocorr"])
    train_step(w, opt, tracker, g)
    assert columns(cfg, w, tracker, 0)["w_grad_autocorr"] == pytest.approx(-1.0, abs=1e-6)


def test_autocorrelation_is_a_cosine_whatever_the_norms():
    """Successive gradients of other norms: g then 2g is cos 1, g then -3g is -1, and
    (1, 0, ...) then (3, 4, 0, ...) is 3/5, per model of a stack and for one model alone
    (dividing by the previous gradient's norm squared would give 2, -3 and 3)."""
    g = torch.randn(3, 4, generator=torch.Generator().manual_seed(3))
    e1, e34 = torch.zeros(3, 4), torch.zeros(3, 4)
    e1[0, 0], e34[0, 0], e34[0, 1] = 1.0, 3.0, 4.0
    pairs = [(g, 2 * g), (g, -3 * g), (e1, e34)]
    expected = [1.0, -1.0, 0.6]
    cfgs = [TrialConfig(optimizer="sgd", lr=0.1, l2=0.0) for _ in pairs]
    w, opt, tracker = stacked(cfgs, torch.ones(3, 3, 4))
    for step in range(2):
        train_step(w, opt, tracker, torch.stack([pair[step] for pair in pairs]))
    assert tracker.counts["w"]["grad_autocorr"] == 1
    got = [columns(c, w, tracker, k)["w_grad_autocorr"] for k, c in enumerate(cfgs)]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    for (first, second), want in zip(pairs, expected, strict=True):
        one = torch.ones(3, 4, requires_grad=True)
        alone = UpdateTracker({"w": one})
        for grad in (first, second):
            one.grad = grad.clone()
            alone.snapshot()
        assert alone.means()["w"]["grad_autocorr"] == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_sgd_rows_have_no_adam_step(optimizer):
    (row,) = Trial(TrialConfig(**SMALL, epochs=1, optimizer=optimizer, lr=0.05, l2=1e-3)).run_epoch()
    assert all(math.isnan(row[c]) for c in layer_columns("adam_step_rms"))
    assert all(-1 <= row[c] <= 1 for c in layer_columns("grad_autocorr"))


def test_adam_trial_writes_both_columns_per_model(tmp_path):
    """A group of two Adam models on synthetic data: finite columns in the Parquet file, each
    model's own (a 10x larger lr takes other steps)."""
    cfgs = [TrialConfig(**SMALL, epochs=2, optimizer="adam", lr=lr, l2=1e-3) for lr in (1e-3, 1e-2)]
    trial = Trial(cfgs)
    while not trial.done:
        trial.run_epoch()
    store = ResultStore(str(tmp_path), "s")
    for history in trial.histories:
        store.write_history(history)
    tables = [pq.read_table(store.path(HISTORY, c.trial_id)).to_pylist() for c in cfgs]
    steps = [t[-1][c] for t in tables for c in layer_columns("adam_step_rms")]
    autocorr = [t[-1][c] for t in tables for c in layer_columns("grad_autocorr")]
    assert len(tables[0]) == 2 and all(0 < v < 1.5 for v in steps), steps
    assert all(-1 <= v <= 1 for v in autocorr), autocorr
    assert steps[:len(LAYERS)] != pytest.approx(steps[len(LAYERS):], rel=1e-3)


def test_a_model_frozen_mid_epoch_leaves_the_others_diagnostics_unchanged(monkeypatch):
    """Adam, 64 steps an epoch: the diverging middle model is frozen at the step-50 check,
    mid-epoch, so the accumulators (last gradient, Adam's step) must drop it there."""
    # rows equal to 1e-12 need one conv algorithm for 3 and 2 models: NCHW (channels_last picks
    # kernels by group count, which moves float32 rounding, not what this test guards)
    base = dict(SMALL, batch_size=8, n_train=512, epochs=2, optimizer="adam", norm="none",
                layout="nchw")
    good = [TrialConfig(**base, lr=lr, l2=1e-3) for lr in (1e-3, 3e-3)]
    bad = TrialConfig(**base, lr=50.0, l2=0.0)
    selected_at, select = [], UpdateTracker.select

    def spy(self, keep, weights):
        selected_at.append(self.steps)
        select(self, keep, weights)

    monkeypatch.setattr(UpdateTracker, "select", spy)
    fused = Trial([good[0], bad, good[1]])
    while not fused.done:
        fused.run_epoch()
    assert fused.histories[1][-1]["diverged"]
    assert fused.history[0]["steps_per_epoch"] == 64 and selected_at == [50]
    alone = Trial(good)
    while not alone.done:
        alone.run_epoch()
    for got, want in zip([fused.histories[0], fused.histories[2]], alone.histories, strict=True):
        # float64 reductions over 3 stacked models vs 2 may round in the last bit on CPUs
        # whose kernels vectorize by tensor shape (AVX-512); a model left in the
        # accumulators moves these columns by far more than 1e-12
        for g, w in zip(got, want, strict=True):
            assert close_rows(comparable(g), comparable(w), rel=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_synthetic_rows_carry_both_columns_for_every_layer(optimizer):
    """analysis/synthetic.py writes the trainer's columns: white gradients, so no
    autocorrelation and Adam's step at its noise RMS (NaN for sgd, as the trainer writes)."""
    from analysis.synthetic import trial_rows

    cfg = TrialConfig(data="synthetic", optimizer=optimizer, lr=0.01, l2=1e-3, epochs=2)
    (row, _) = trial_rows(cfg, 0.3, diverged=False, steps_per_epoch=10)
    assert all(row[c] == 0.0 for c in layer_columns("grad_autocorr"))
    steps = [row[c] for c in layer_columns("adam_step_rms")]
    assert all(math.isnan(v) for v in steps) if optimizer == "sgd" else steps == [ema_noise_rms()] * 4

"""Measured per-layer metrics against values computed here by other means (fast; the slow
equilibrium tests are not the only check of the angle and effective-LR formulas).

Every rotation below turns each output unit by the same angle within its own plane, and the
training check uses layer norm (one group per conv layer), so the mean over groups and the
whole-layer angle coincide: the expectations hold for either definition of the angle.
"""
import math

import numpy as np
import pytest
import torch

import l2bn.train
from l2bn.config import TrialConfig
from l2bn.metrics import UpdateTracker, angular_update, group_angles, layer_metrics, relative_update
from l2bn.schema import LAYERS
from l2bn.train import Trial


def rotated(w: torch.Tensor, theta: float, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Each row (output unit) of w turned by theta towards a random direction orthogonal to
    it, of the same norm, then all rows multiplied by `scale`."""
    rows = w.flatten(1).double()
    u = torch.randn(rows.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u -= (u * rows).sum(1, keepdim=True) / (rows * rows).sum(1, keepdim=True) * rows
    u *= rows.norm(dim=1, keepdim=True) / u.norm(dim=1, keepdim=True)
    out = scale * (math.cos(theta) * rows + math.sin(theta) * u)
    return out.reshape(w.shape).to(w.dtype)


@pytest.mark.parametrize("theta", [0.02, 0.3, 1.2])
@pytest.mark.parametrize("whole_layer", [False, True])
def test_angular_update_of_a_known_rotation(theta, whole_layer):
    w = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    w[0] *= 5.0  # units of different norms
    after = rotated(w, theta, scale=1.7)  # a rescaling does not change the angle
    # every unit turns by theta, so the whole layer does too, and so does each group
    assert float(angular_update(w, after)) == pytest.approx(theta, rel=1e-3)
    groups = group_angles(w, after, whole_layer).numpy()
    assert groups.shape == ((1,) if whole_layer else (8,))
    np.testing.assert_allclose(groups, theta, rtol=1e-3)
    # ||w' - w|| / ||w|| = sqrt(a^2 - 2 a cos(theta) + 1) for w' = a * (w turned by theta)
    expected_rel = math.sqrt(1.7**2 - 2 * 1.7 * math.cos(theta) + 1)
    assert float(relative_update(w, after)) == pytest.approx(expected_rel, rel=1e-4)


@pytest.mark.parametrize("optimizer, momentum", [("sgd", 0.0), ("momentum", 0.9), ("adam", 0.0)])
def test_layer_metrics_by_hand(optimizer, momentum):
    """Two steps of known rotations and a known gradient: every column of layer_metrics."""
    gen = torch.Generator().manual_seed(2)
    weights = {"conv1": torch.randn(4, 3, 3, 3, generator=gen),
               "conv2": torch.randn(8, 4, 3, 3, generator=gen) * 0.3,
               "conv3": torch.randn(16, 8, 3, 3, generator=gen) * 2.0,
               "fc": torch.randn(10, 256, generator=gen) * 0.1}
    grads = {n: torch.randn(w.shape, generator=gen) for n, w in weights.items()}
    for name, w in weights.items():
        w.grad = grads[name]
    cfg = TrialConfig(optimizer=optimizer, lr=0.05, l2=1e-3)
    tracker = UpdateTracker(weights)
    first = {n: w.clone() for n, w in weights.items()}
    for step, theta in enumerate((0.01, 0.05)):
        tracker.snapshot()
        for w in weights.values():
            w.copy_(rotated(w, theta, scale=1.0 + 0.1 * step, seed=step))
        tracker.update()
    row = layer_metrics(cfg, weights, tracker, normalized={"conv1", "conv2", "conv3"})
    power = 1 if optimizer == "adam" else 2  # lr/||w|| for Adam, lr/||w||^2 for SGD (README)
    for name, w in weights.items():
        final = w.double().flatten(1).numpy()
        units = np.linalg.norm(final, axis=1)
        assert row[f"{name}_w_norm"] == pytest.approx(np.linalg.norm(final), rel=1e-5)
        assert row[f"{name}_unit_norm"] == pytest.approx(units.mean(), rel=1e-5)
        assert row[f"{name}_eff_lr"] == pytest.approx(np.mean(0.05 / units**power), rel=1e-5)
        # RMS over the steps of the whole-layer angle: sqrt((0.01^2 + 0.05^2) / 2)
        assert row[f"{name}_angular_update"] == pytest.approx(math.sqrt(0.0013), rel=1e-3)
        assert row[f"{name}_angular_update_group_median"] == pytest.approx(math.sqrt(0.0013), rel=1e-3)
        assert row[f"{name}_dead_fraction"] == 0
        rel = np.mean([math.sqrt(a * a - 2 * a * math.cos(t) + 1) for a, t in ((1.0, 0.01), (1.1, 0.05))])
        assert row[f"{name}_rel_update"] == pytest.approx(rel, rel=1e-4)
        # ||g_u|| * ||w_u|| per unit before each step: the gradient is fixed and the first
        # step (scale 1) keeps every unit's norm, so both steps give the same value
        g = np.linalg.norm(grads[name].double().flatten(1).numpy(), axis=1)
        w0 = np.linalg.norm(first[name].double().flatten(1).numpy(), axis=1)
        assert row[f"{name}_grad_norm_unit"] == pytest.approx((g * w0).mean(), rel=1e-5)
        if name == "fc":
            assert math.isnan(row[f"{name}_pred_angular_update"])
        elif optimizer != "adam":  # sqrt(2*lr*wd/(1+mu)), wd = 2*l2
            assert row[f"{name}_pred_angular_update"] == pytest.approx(
                math.sqrt(2 * 0.05 * 2e-3 / (1 + momentum)))


def test_training_row_metrics_match_the_weights_step_by_step(monkeypatch):
    """One epoch of a real trial (layer norm: one scale group per conv layer). The weights
    after every step are recorded; the row's angular update, relative update and effective
    LR are recomputed from them in float64."""
    lr = 0.1
    cfg = TrialConfig(data="synthetic", device="cpu", width=4, batch_size=64, epochs=1,
                      n_train=256, n_test=64, optimizer="sgd", lr=lr, l2=1e-3, norm="layer")
    trial = Trial(cfg)
    snapshots = [{n: w[0].detach().double().clone() for n, w in trial.stack.weights().items()}]
    original = l2bn.train.after_step

    def recording(model, cfg):
        original(model, cfg)
        snapshots.append({n: w[0].detach().double().clone() for n, w in trial.stack.weights().items()})

    monkeypatch.setattr(l2bn.train, "after_step", recording)
    (row,) = trial.run_epoch()
    assert len(snapshots) == 1 + 4 and row["steps_per_epoch"] == 4
    for name in LAYERS:
        steps = list(zip(snapshots[:-1], snapshots[1:], strict=True))
        rel = np.mean([float((b[name] - a[name]).norm() / a[name].norm()) for a, b in steps])
        assert row[f"{name}_rel_update"] == pytest.approx(rel, rel=1e-4)
        final = snapshots[-1][name]
        groups = final.reshape(1, -1) if name != "fc" else final.flatten(1)  # layer norm
        units = groups.norm(dim=1).numpy()
        assert row[f"{name}_eff_lr"] == pytest.approx(np.mean(lr / units**2), rel=1e-5)  # SGD
        if name == "fc":
            continue  # fc's groups are its rows, where mean and whole-layer angles differ
        angles = []
        for a, b in steps:
            a, b = a[name].flatten(), b[name].flatten()
            dot = float(a @ b)  # atan2(|a x b|, a.b), |a x b|^2 = |a|^2 |b|^2 - (a.b)^2
            angles.append(math.atan2(math.sqrt(max(float(a @ a) * float(b @ b) - dot**2, 0.0)), dot))
        rms = math.sqrt(np.mean(np.square(angles)))  # the theory fixes the mean squared angle
        assert row[f"{name}_angular_update"] == pytest.approx(rms, rel=2e-3)
        assert 1e-4 < np.mean(angles) < 0.5


def test_the_effective_lr_leaves_out_units_whose_weights_are_zero():
    """A unit at exactly 0 (a dead weight-norm direction, model.NORM_FLOOR) has no effective LR:
    the column is the mean over the other units, hand-computed, not inf."""
    from l2bn.metrics import UpdateTracker, layer_metrics

    w = torch.ones(3, 2, 1, 1)
    w[1] = 0.0
    w[2] *= 2.0  # unit norms sqrt(2), 0, 2*sqrt(2)
    cfg = TrialConfig(data="synthetic", lr=0.1)
    row = layer_metrics(cfg, {"conv2": w}, UpdateTracker({"conv2": w}), {"conv2"})
    assert row["conv2_eff_lr"] == pytest.approx((0.1 / 2 + 0.1 / 8) / 2)

"""SGD + L2 on a scale-invariant problem reaches the predicted equilibrium angular update."""
import math

import pytest
import torch
import torch.nn.functional as F

from l2bn import theory
from l2bn.metrics import UpdateTracker, angle_columns


def _run_to_equilibrium(lr: float, l2: float, steps: int, measure: int, adam: bool = False) -> dict:
    """Linear layer -> batch norm (scale-invariant in w) -> fixed head; random labels give
    mini-batch noise so the gradient never vanishes. Returns the means over the last
    `measure` steps (angular update, unit gradient norm), from the trials' own UpdateTracker."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 32, generator=gen)
    y = torch.randint(0, 4, (2048,), generator=gen)
    w = torch.nn.Parameter(torch.randn(16, 32, generator=gen))
    head = torch.randn(4, 16, generator=gen)
    kind = torch.optim.Adam if adam else torch.optim.SGD  # both with coupled L2, as in l2bn.optim
    opt = kind([w], lr=lr, weight_decay=theory.weight_decay(l2).item())
    tracker = UpdateTracker({"w": w})
    for step in range(steps):
        if step == steps - measure:
            tracker.reset()
        idx = torch.randint(0, 2048, (32,), generator=gen)
        h = F.batch_norm(x[idx] @ w.T, None, None, training=True)
        loss = F.cross_entropy(h @ head.T, y[idx])
        opt.zero_grad()
        loss.backward()
        tracker.snapshot()
        opt.step()
        tracker.update()
    means = tracker.means()["w"]
    return {"angular_update": angle_columns("w", means)["w_angular_update"],
            "grad_norm_unit": means["grad_norm_unit"]}


@pytest.mark.parametrize("lr, l2", [(0.1, 0.01), (0.04, 0.025)])
def test_sgd_angular_update_matches_sqrt_2_lr_wd(lr, l2):
    relax = theory.relaxation_steps("sgd", lr, l2)  # 1/(lr*wd) steps
    measured = _run_to_equilibrium(lr, l2, steps=int(6 * relax) + 500, measure=500)["angular_update"]
    predicted = theory.equilibrium_angular_update("sgd", lr, l2)
    assert predicted == pytest.approx(math.sqrt(2 * lr * 2 * l2))
    assert measured == pytest.approx(predicted, rel=0.15)


@pytest.mark.parametrize("lr, l2", [(1e-2, 1e-2), (1e-2, 1e-1)])
def test_adam_angular_update_matches_prediction(lr, l2):
    """Adam + coupled L2: sqrt((1-b1)/(1+b1)) * (2*wd*lr^2*d/||g_hat||)^(1/3) (see theory.py)."""
    measured = _run_to_equilibrium(lr, l2, steps=3000, measure=1000, adam=True)
    g = measured["grad_norm_unit"]
    assert theory.relaxation_steps("adam", lr, l2, fan_in=32, grad_norm_unit=g) < 1000
    predicted = theory.equilibrium_angular_update("adam", lr, l2, fan_in=32, grad_norm_unit=g)
    assert measured["angular_update"] == pytest.approx(predicted, rel=0.15)


def test_theory_values_by_hand():
    # sgd: sqrt(2*0.1*0.02) = 0.0632...; momentum 0.9 divides the square by 1.9
    assert theory.equilibrium_angular_update("sgd", 0.1, 0.01) == pytest.approx(0.063245553)
    assert theory.equilibrium_angular_update("momentum", 0.1, 0.01, momentum=0.9) == \
        pytest.approx(math.sqrt(0.004 / 1.9))
    # adamw: sqrt(2*lr*wd*(1-b1)/(1+b1)) = sqrt(0.004*0.1/1.9)
    assert theory.equilibrium_angular_update("adamw", 0.1, 0.01) == pytest.approx(math.sqrt(0.0004 / 1.9))
    # adam: sqrt(0.1/1.9) * (2*wd*lr^2*d/g)^(1/3) = sqrt(0.1/1.9) * (2*0.02*0.01*8/2)^(1/3)
    assert theory.equilibrium_angular_update("adam", 0.1, 0.01, fan_in=8, grad_norm_unit=2.0) == \
        pytest.approx(math.sqrt(0.1 / 1.9) * 0.0016 ** (1 / 3))
    assert math.isnan(theory.equilibrium_angular_update("adam", 0.1, 0.01))
    assert theory.effective_lr_proxy("adam", 0.1, 0.01) == pytest.approx((1e-4) ** (1 / 3))
    assert theory.relaxation_steps("momentum", 0.1, 0.01, momentum=0.9) == pytest.approx(50.0)
    assert theory.measured_effective_lr("sgd", 0.1, 2.0) == pytest.approx(0.025)
    # adam: ||w_eq||^3 = lr*sqrt(d)*g/(2*wd) = 0.001*4*1/0.04 = 0.1; steps = g/(lr*wd*sqrt(d)*w_eq)
    assert theory.relaxation_steps("adam", 1e-3, 0.01, fan_in=16, grad_norm_unit=1.0) == \
        pytest.approx(1 / (1e-3 * 0.02 * 4 * 0.1 ** (1 / 3)))
    assert theory.relaxation_steps("adam", 1e-3, 0.0, fan_in=16, grad_norm_unit=1.0) == math.inf
    assert theory.measured_effective_lr("adam", 0.1, 2.0) == pytest.approx(0.05)


def test_equilibrium_norm_by_hand():
    """The table's equilibrium ||w||, and Adam's relaxation time built on it."""
    # sgd: (lr*g^2/(2*wd))^(1/4) = (0.1*4/0.04)^(1/4) = 10^(1/4); momentum 0.9 divides by 0.1
    assert theory.equilibrium_norm("sgd", 0.1, 0.01, grad_norm_unit=2.0) == pytest.approx(10 ** 0.25)
    assert theory.equilibrium_norm("momentum", 0.1, 0.01, 0.9, grad_norm_unit=2.0) == \
        pytest.approx(100 ** 0.25)
    # adam: (lr*sqrt(d)*g/(2*wd))^(1/3) = (0.001*4*1/0.04)^(1/3); adamw: (lr*d/(2*wd))^(1/2)
    assert theory.equilibrium_norm("adam", 1e-3, 0.01, fan_in=16, grad_norm_unit=1.0) == \
        pytest.approx(0.1 ** (1 / 3))
    assert theory.equilibrium_norm("adamw", 1e-3, 0.01, fan_in=16) == pytest.approx(0.4 ** 0.5)
    assert theory.equilibrium_norm("sgd", 0.1, 0.0, grad_norm_unit=1.0) == math.inf


def test_slowest_relaxation_uses_each_layers_group_size():
    """Adam: the max over layers of relaxation_steps at group_size (the whole layer for layer
    norm); SGD's the same for every layer."""
    grads = {"conv1": 1.0, "conv2": 2.0, "conv3": 0.5}
    for norm in ("batch", "layer"):
        per_layer = [theory.relaxation_steps("adam", 1e-3, 0.01, fan_in=theory.group_size(layer, 8, norm),
                                             grad_norm_unit=g) for layer, g in grads.items()]
        assert theory.slowest_relaxation_steps("adam", 1e-3, 0.01, 8, norm, grads) == \
            pytest.approx(max(per_layer))
    # batch norm: conv1 d = 27; layer norm: d = 27*8, so 8^(2/3) = 4 times faster
    assert theory.layer_relaxation_steps("adam", 1e-3, 0.01, "conv1", 8, "batch", 1.0) == \
        pytest.approx(4 * theory.layer_relaxation_steps("adam", 1e-3, 0.01, "conv1", 8, "layer", 1.0))
    # an array of norms, one per row, picks each row's group size
    both = theory.slowest_relaxation_steps("adam", [1e-3, 1e-3], [0.01, 0.01], [8, 8],
                                           ["batch", "layer"], {k: [v, v] for k, v in grads.items()})
    assert both == pytest.approx([theory.slowest_relaxation_steps("adam", 1e-3, 0.01, 8, n, grads)
                                  for n in ("batch", "layer")])
    assert theory.slowest_relaxation_steps("momentum", 0.1, 0.01, 8, "layer", grads, 0.9) == \
        pytest.approx(50.0)

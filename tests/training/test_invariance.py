"""docs/theory.md#scale-invariance on the real model: scale invariance and gradient scaling."""
import pytest
import torch
import torch.nn.functional as F

from l2bn.model import ConvNet, normalized_weights, scale_groups, whole_layer_group

NORMS = ["batch", "weight", "layer", "instance"]


def _setup(norm: str):
    torch.manual_seed(0)
    model = ConvNet(norm, width=4).double().train()
    # Normalizations add eps to the variance, the only thing that breaks exact invariance;
    # shrink it so the test checks the architecture, not eps (1e-5 vs var*a^2 at a=0.1).
    for module in model.modules():
        if hasattr(module, "eps"):
            module.eps = 1e-12
    x = torch.randn(16, 3, 32, 32, dtype=torch.float64)
    y = torch.randint(0, 10, (16,))
    return model, x, y


@torch.no_grad()
def _scale_(weight: torch.Tensor, a: float) -> None:
    weight.mul_(a)


def test_layer_norm_is_not_invariant_per_unit():
    """Layer norm pools channels: rescaling one output unit alone changes the output."""
    model, x, _ = _setup("layer")
    before = model(x)
    with torch.no_grad():
        normalized_weights(model)["conv2"][0].mul_(10.0)
    assert not torch.allclose(model(x), before, atol=1e-6)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("a", [0.1, 10.0])
def test_outputs_invariant_to_weight_scale(norm, a):
    model, x, _ = _setup(norm)
    before = model(x)
    for w in normalized_weights(model).values():
        _scale_(w, a)
    after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-8, atol=1e-8)
    assert not torch.allclose(before, torch.zeros_like(before))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("a", [0.1, 10.0])
def test_l2_loss_at_scaled_weights_equals_rescaled_lambda(norm, a):
    """L_lam(a*w) = L_{lam*a^2}(w) with L_lam(w) = loss + lam*||w||^2 (claim 1)."""
    model, x, y = _setup(norm)
    lam = 0.3
    weights = list(normalized_weights(model).values())

    def loss(lam_: float) -> torch.Tensor:
        penalty = sum((w ** 2).sum() for w in weights)
        return F.cross_entropy(model(x), y) + lam_ * penalty

    with torch.no_grad():
        rhs = loss(lam * a ** 2)
        for w in weights:
            _scale_(w, a)
        lhs = loss(lam)
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("norm", NORMS)
def test_gradient_scales_inversely_and_is_orthogonal(norm):
    """grad L(a*w) = grad L(w) / a, and <grad, w> = 0 per output unit (claim 2)."""
    a = 10.0
    model, x, y = _setup(norm)
    weights = normalized_weights(model)

    def grads() -> dict:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        return {k: w.grad.clone() for k, w in weights.items()}

    g1 = grads()
    for name, w in weights.items():
        # Per output unit, or over the whole layer for layer norm (its invariance group).
        g, v = (scale_groups(t, whole_layer_group(model, name)) for t in (g1[name], w.detach()))
        per_unit = (g * v).sum(1)
        scale = g.norm(dim=1) * v.norm(dim=1)
        assert (per_unit.abs() <= 1e-8 * scale + 1e-15).all(), name
        _scale_(w, a)
    g2 = grads()
    for name in weights:
        torch.testing.assert_close(g2[name], g1[name] / a, rtol=1e-6, atol=1e-12)
        assert g1[name].norm() > 0


@pytest.mark.parametrize("width", [4, 16])
def test_theory_fan_in_matches_the_model(width):
    from l2bn.theory import conv_fan_in

    model = ConvNet("batch", width=width)
    for name, w in normalized_weights(model).items():
        assert conv_fan_in(name, width) == w[0].numel()

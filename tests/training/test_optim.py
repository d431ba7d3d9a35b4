"""L2 vs projection: which parameters are decayed, and what the projection does."""
import pytest
import torch
import torch.nn.functional as F

from l2bn.config import TrialConfig
from l2bn.model import ConvNet, decayed_weights, normalized_weights, scale_groups, whole_layer_group
from l2bn.reference import after_step, build_optimizer, param_groups

NORMS = ["batch", "weight", "layer", "instance"]


def _model(norm: str, seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet(norm, width=4)


def _batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(16, 3, 32, 32, generator=gen), torch.randint(0, 10, (16,), generator=gen)


@pytest.mark.parametrize("norm, scope", [(n, s) for n in NORMS for s in ("all", "normalized")]
                         + [("none", "all")])
def test_l2_only_on_conv_and_linear_weights(norm, scope):
    model = _model(norm)
    cfg = TrialConfig(norm=norm, l2=0.01, l2_scope=scope)
    decayed, rest = param_groups(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = sorted(names[id(p)] for p in decayed["params"])
    expected = ["conv1", "conv2", "conv3"] + (["fc"] if scope == "all" else [])
    assert len(decayed_names) == len(expected)
    assert decayed["weight_decay"] == pytest.approx(0.02) and rest["weight_decay"] == 0.0
    for name in decayed_names:  # weights (or weight norm's direction v), never gains/biases
        assert name.endswith(".weight") or name.endswith("original1"), name
        assert ".norm." not in name and "bias" not in name
    assert len(decayed["params"]) + len(rest["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adamw"])
def test_zero_gradient_step_shrinks_only_decayed_weights(optimizer):
    """With a zero loss gradient, one step multiplies decayed weights by (1 - lr*2*l2) for
    SGD-family and AdamW's decoupled decay, and leaves gains and biases exactly unchanged."""
    model = _model("batch")
    for p in model.parameters():  # non-trivial gains/biases
        if p.dim() == 1:
            torch.nn.init.uniform_(p, 0.5, 1.5)
    cfg = TrialConfig(optimizer=optimizer, norm="batch", lr=0.1, l2=0.05)
    opt = build_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    decayed = {id(p) for p in decayed_weights(model, "all").values()}
    for n, p in model.named_parameters():
        if id(p) not in decayed:
            assert torch.equal(p, before[n]), n
        elif optimizer in ("sgd", "momentum", "adamw"):
            torch.testing.assert_close(p, before[n] * (1 - 0.1 * 2 * 0.05))
        else:  # Adam's first step is lr*g/(|g|+eps) with g the coupled L2 gradient 2*l2*w
            g = 2 * 0.05 * before[n]
            torch.testing.assert_close(p, before[n] - 0.1 * g / (g.abs() + 1e-8))


@pytest.mark.parametrize("norm", NORMS)
def test_projection_puts_units_on_sphere_without_changing_outputs(norm):
    model = _model(norm).train()
    cfg = TrialConfig(norm=norm, update="projection", optimizer="sgd", lr=0.5, l2=0.01)
    opt = build_optimizer(model, cfg)
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    with torch.no_grad():
        out_before = model(x)
    after_step(model, cfg)
    with torch.no_grad():
        out_after = model(x)
    for name, w in normalized_weights(model).items():
        norms = scale_groups(w.detach(), whole_layer_group(model, name)).norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-6, rtol=0)
    torch.testing.assert_close(out_after, out_before, atol=1e-4, rtol=1e-4)


def test_projection_leaves_classifier_alone():
    model = _model("batch")
    cfg = TrialConfig(norm="batch", update="projection")
    before = model.fc.weight.detach().clone()
    after_step(model, cfg)
    assert torch.equal(model.fc.weight, before)
    assert not torch.allclose(before.norm(dim=1), torch.ones(10))


def test_projection_with_normalized_scope_turns_l2_into_a_step_size():
    """SGD + projection: (1 - lr*wd)*w - lr*g projects to the same direction as
    w - lr/(1 - lr*wd)*g, so on the normalized weights L2 only rescales the step (exactly)."""
    lr, l2 = 0.2, 0.5
    wd = 2 * l2
    x, y = _batch()
    after = []
    for step_lr, step_l2 in ((lr, l2), (lr / (1 - lr * wd), 0.0)):
        model = _model("batch")
        cfg = TrialConfig(norm="batch", update="projection", l2_scope="normalized",
                          optimizer="sgd", lr=step_lr, l2=step_l2)
        after_step(model, cfg)  # start on the sphere, as train() does
        opt = build_optimizer(model, cfg)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        after_step(model, cfg)
        after.append({k: w.detach().clone() for k, w in normalized_weights(model).items()})
    for name in after[0]:
        torch.testing.assert_close(after[0][name], after[1][name], rtol=1e-5, atol=1e-6)

"""The ConvNet's parameters per normalization, as the README describes the model.

README, Conventions, Model: three blocks conv3x3 -> norm -> ReLU -> maxpool2, no conv bias
where a batch, layer or instance norm follows (the norm's mean subtraction would cancel it
and its own shift replaces it), then Linear(4w*4*4, 10) named fc. Weight norm keeps the conv
bias and splits the weight into g (original0) and the direction v (original1).
"""
import pytest
import torch

from l2bn.model import ConvNet

W = 4  # conv widths (w, 2w, 4w)
CHANNELS = {"conv1": (3, W), "conv2": (W, 2 * W), "conv3": (2 * W, 4 * W)}


def expected_parameters(norm: str) -> dict[str, tuple[int, ...]]:
    """name -> shape, written from the README's model description."""
    params = {}
    for block, (c_in, c_out) in CHANNELS.items():
        kernel = (c_out, c_in, 3, 3)
        if norm == "weight":
            params[f"{block}.conv.parametrizations.weight.original0"] = (c_out, 1, 1, 1)  # g
            params[f"{block}.conv.parametrizations.weight.original1"] = kernel  # v
        else:
            params[f"{block}.conv.weight"] = kernel
        if norm in ("none", "weight"):  # nothing after the conv removes a bias
            params[f"{block}.conv.bias"] = (c_out,)
        else:  # batch, layer, instance: the norm's affine gain and shift per channel
            params[f"{block}.norm.weight"] = (c_out,)
            params[f"{block}.norm.bias"] = (c_out,)
    params["fc.weight"] = (10, 4 * W * 4 * 4)
    params["fc.bias"] = (10,)
    return params


@pytest.mark.parametrize("norm", ["none", "batch", "weight", "layer", "instance"])
def test_parameters_per_normalization_match_the_readme(norm):
    model = ConvNet(norm, W)
    got = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert got == expected_parameters(norm)
    conv_biases = sorted(name for name in got if name.endswith("conv.bias"))
    assert conv_biases == ([f"{b}.conv.bias" for b in CHANNELS] if norm in ("none", "weight") else [])


def test_parameter_count_by_hand():
    """Batch norm, w = 4: convs 4*3*9 + 8*4*9 + 16*8*9, gains/shifts 2*(4 + 8 + 16), fc 256*10 + 10."""
    count = sum(p.numel() for p in ConvNet("batch", W).parameters())
    assert count == (108 + 288 + 1152) + 2 * 28 + 2570
    assert sum(p.numel() for p in ConvNet("none", W).parameters()) == count - 28
    out = ConvNet("batch", W)(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_weight_norm_equals_torchs_and_keeps_its_parameter_names():
    """model.WeightNorm is torch's weight_norm (float64: values and gradients agree to 1e-12)
    under the same parameter names, so checkpoints written before issue 17 still load."""
    from torch.nn.utils import parametrizations

    torch.manual_seed(0)
    ours = ConvNet("weight", width=W).double()
    theirs = ConvNet("batch", width=W).double()  # the same net with torch's weight norm
    for name in CHANNELS:
        block = getattr(theirs, name)
        block.conv = parametrizations.weight_norm(torch.nn.Conv2d(*CHANNELS[name], 3, padding=1))
        block.norm = torch.nn.Identity()
    theirs.double().load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for net in (ours, theirs):
        net(x).square().sum().backward()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12, msg=name)


def test_a_weight_norm_unit_whose_v_is_zero_is_zero_not_nan():
    """Issue 17: Adam's L2 step drove dead channels' v to exactly 0 and g*v/||v|| = 0/0 made the
    whole trial NaN. With the floor that unit's weight is 0 and every gradient stays finite,
    one model or a fused stack alike."""
    from l2bn.stack import WN_V, ModelStack

    torch.manual_seed(0)
    net = ConvNet("weight", width=W)
    v = net.conv2.conv.parametrizations.weight.original1
    with torch.no_grad():
        v[3] = 0.0
    w = net.conv2.conv.weight
    assert torch.all(w[3] == 0) and torch.isfinite(w).all()
    x = torch.randn(4, 3, 32, 32)
    net(x).square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    stack = ModelStack(net, 2)
    assert torch.all(stack.params[f"conv2.{WN_V}"][:, 3] == 0)
    stack.forward(x, training=True).square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in stack.params.values())

"""The 4-layer ConvNet of the study: three conv blocks and a linear classifier."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .schema import CLASSIFIER, CONV_LAYERS, LAYERS

# Smallest norm a scale-invariant group is divided by (projection and weight norm): a unit
# whose weights reach exactly 0 (a dead channel's v under Adam's L2) then gives 0,
# not 0/0 = NaN. Like torch.nn.functional.normalize's eps.
NORM_FLOOR = 1e-12


def _norm_layer(norm: str, channels: int, affine: bool = True) -> nn.Module:
    """The normalization that follows a conv, by name (weight norm lives on the conv itself)."""
    table = {
        "batch": lambda: nn.BatchNorm2d(channels, affine=affine),
        "layer": lambda: nn.GroupNorm(1, channels, affine=affine),  # layer norm over (C, H, W)
        "instance": lambda: nn.GroupNorm(channels, channels, affine=affine),  # instance norm
        "none": nn.Identity,
        "weight": nn.Identity,
    }
    return table[norm]()


class ConvBlock(nn.Module):
    """conv3x3 -> normalization -> ReLU -> 2x2 max-pool.

    scale_invariant: no affine parameters after the normalization; for weight norm no bias
    and the gain g frozen at its initialization, so the conv weight is the only trained
    parameter and the block is invariant to its scale.
    """

    def __init__(self, c_in: int, c_out: int, norm: str, scale_invariant: bool = False):
        super().__init__()
        # A following batch/layer/instance norm removes any bias; weight norm and none keep it.
        bias = norm == "none" or (norm == "weight" and not scale_invariant)
        conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)
        self.conv = weight_norm(conv) if norm == "weight" else conv
        if norm == "weight" and scale_invariant:
            self.conv.parametrizations.weight.original0.requires_grad_(False)  # g
        self.norm = _norm_layer(norm, c_out, affine=not scale_invariant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.max_pool2d(torch.relu(self.norm(self.conv(x))), 2)


class WeightNorm(nn.Module):
    """w = g * v / ||v|| per output channel (Salimans & Kingma 2016, eq. 2), as
    torch.nn.utils.parametrizations.weight_norm (same parameters: original0 = g, original1 = v)
    except that ||v|| is floored at NORM_FLOOR, so a unit whose v reached 0 is 0, not NaN."""

    def forward(self, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v * (g / channel_norms(v))

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return channel_norms(weight), weight


def channel_norms(v: torch.Tensor, lead: int = 1) -> torch.Tensor:
    """||v|| per output channel, >= NORM_FLOOR: over every dim after the first `lead` (1: one
    weight (C, ...); 2: a stack of K weights (K, C, ...)), kept as size-1 dims."""
    norms = v.flatten(lead).norm(dim=lead).clamp_min(NORM_FLOOR)
    return norms.view(*v.shape[:lead], *[1] * (v.dim() - lead))


def weight_norm(conv: nn.Conv2d) -> nn.Conv2d:
    """conv with its weight reparametrized as WeightNorm's g and v."""
    parametrize.register_parametrization(conv, "weight", WeightNorm(), unsafe=True)
    return conv


class ConvNet(nn.Module):
    """Conv widths (w, 2w, 4w) on 32x32 inputs, then a linear classifier to 10 classes.

    scale_invariant=True makes every trained weight scale-invariant (docs/theory.md): the
    classifier stays at its initialization and the normalizations have no affine parameters.
    """

    def __init__(self, norm: str = "batch", width: int = 32, num_classes: int = 10,
                 scale_invariant: bool = False):
        super().__init__()
        self.norm_name = norm
        self.conv1 = ConvBlock(3, width, norm, scale_invariant)
        self.conv2 = ConvBlock(width, 2 * width, norm, scale_invariant)
        self.conv3 = ConvBlock(2 * width, 4 * width, norm, scale_invariant)
        self.fc = nn.Linear(4 * width * 4 * 4, num_classes)  # 32 -> 16 -> 8 -> 4 pixels
        if scale_invariant:  # a fixed classifier (Hoffer et al. 2018, "Fix your classifier")
            self.fc.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3(self.conv2(self.conv1(x)))
        return self.fc(x.flatten(1))


def layer_weight(model: ConvNet, name: str) -> torch.nn.Parameter:
    """The decayed weight of a layer: the conv weight, or weight norm's direction v."""
    if name == CLASSIFIER:
        return model.fc.weight
    conv = getattr(model, name).conv
    if parametrize.is_parametrized(conv, "weight"):
        return conv.parametrizations.weight.original1  # v: the scale-invariant direction
    return conv.weight


def whole_layer_group(model: ConvNet, name: str) -> bool:
    """True where the whole layer, not each output unit, is the scale-invariant group.

    Batch, instance and weight norm normalize each output channel on its own, so each unit
    is invariant to its own scale; layer norm pools all channels, so only a joint rescaling
    of the layer leaves the output unchanged.
    """
    return model.norm_name == "layer" and name in CONV_LAYERS


def scale_groups(weight: torch.Tensor, whole_layer: bool) -> torch.Tensor:
    """(G, D) view of a weight: one row per scale-invariant group (output unit or layer)."""
    return weight.reshape(1, -1) if whole_layer else weight.flatten(1)


def unit_norms(weight: torch.Tensor, whole_layer: bool = False) -> torch.Tensor:
    """Norm of each scale-invariant group: output unit (row / output channel) or whole layer."""
    return scale_groups(weight.detach(), whole_layer).norm(dim=1)


def normalized_weights(model: ConvNet) -> dict[str, torch.nn.Parameter]:
    """Weights followed by a normalization (scale-invariant); empty for norm='none'."""
    if model.norm_name == "none":
        return {}
    return {name: layer_weight(model, name) for name in CONV_LAYERS}


def decayed_weights(model: ConvNet, scope: str) -> dict[str, torch.nn.Parameter]:
    """Weights that get L2: all conv + classifier weights, or only the normalized ones."""
    if scope == "normalized":
        return normalized_weights(model)
    return {name: layer_weight(model, name) for name in LAYERS}


@torch.no_grad()
def project_(model: ConvNet) -> None:
    """Direct weight-normalization update (van Laarhoven 2017): w_u <- w_u/||w_u|| for each
    output unit u; for layer norm the whole layer is the unit (see whole_layer_group)."""
    for name, weight in normalized_weights(model).items():
        whole = whole_layer_group(model, name)
        norms = unit_norms(weight, whole).clamp_min(NORM_FLOOR)
        weight.div_(norms.view(-1, *([1] * (weight.dim() - 1))) if not whole else norms)

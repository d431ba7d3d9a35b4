"""A stack of K ConvNets of one shape trained as one model (horizontal fusion, as HFTA does).

Each parameter and buffer of l2bn/model.py's ConvNet is held as one (K, ...) tensor under
the ConvNet's own name, so model k's state_dict is `{name: t[k]}`. The forward pass runs all
K models on one shared batch with one kernel per layer:
- conv1 is one ordinary conv with K*C output channels (the input is shared, so it is not
  replicated); conv2/conv3 are grouped convs with groups=K (HFTA's fused conv);
- batch norm over K*C channels is batch norm per channel of each model (its running
  statistics are the (K, C) buffers); layer norm GroupNorm(1, C) is GroupNorm(K, K*C);
  instance norm GroupNorm(C, C) is GroupNorm(K*C, K*C); weight norm is model.WeightNorm's
  g*v/max(||v||, NORM_FLOOR) computed on the stacked tensors;
- the classifier is one batched matmul (K, N, F) x (K, F, 10).
No operation mixes models, so a model whose weights turn non-finite leaves the others alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import (
    NORM_FLOOR,
    ConvNet,
    channel_norms,
    decayed_weights,
    layer_weight,
    normalized_weights,
    unit_norms,
    whole_layer_group,
)
from .schema import CONV_LAYERS, LAYERS

BN_MOMENTUM, NORM_EPS = 0.1, 1e-5  # nn.BatchNorm2d / nn.GroupNorm defaults
WN_G, WN_V = "conv.parametrizations.weight.original0", "conv.parametrizations.weight.original1"


class ModelStack:
    """K copies of a ConvNet as (K, ...) tensors: `params` (the trained leaves, with grads) and
    `buffers` (running statistics, and the parameters the template does not train, e.g. the
    frozen classifier of a scale-invariant net)."""

    def __init__(self, template: ConvNet, k: int):
        """Stack k copies of `template` (its current weights; they all start equal)."""
        self.norm = template.norm_name
        self.params = {n: p.detach().unsqueeze(0).repeat(k, *[1] * p.dim()).requires_grad_()
                       for n, p in template.named_parameters() if p.requires_grad}
        frozen = [(n, p) for n, p in template.named_parameters() if not p.requires_grad]
        self.buffers = {n: b.detach().unsqueeze(0).repeat(k, *[1] * b.dim()).clone()
                        for n, b in [*template.named_buffers(), *frozen]}
        self.dtype = next(template.parameters()).dtype
        names = {id(p): n for n, p in template.named_parameters()}
        # Per layer: the name of its decayed weight (weight norm's v), from model.py's rules.
        self.weight_names = {layer: names[id(layer_weight(template, layer))] for layer in LAYERS}
        self.normalized = set(normalized_weights(template))
        self.whole_layer = {n for n in LAYERS if whole_layer_group(template, n)}
        self._decayed = {scope: {names[id(p)] for p in decayed_weights(template, scope).values()}
                         for scope in ("all", "normalized")}

    def __len__(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def decayed(self, scope: str) -> set[str]:
        """Names of the parameters that get L2 under `scope` (model.decayed_weights)."""
        return self._decayed[scope]

    def weights(self) -> dict[str, torch.Tensor]:
        """Each layer's stacked decayed weight (K, ...), by layer name (model.layer_weight)."""
        return {layer: self.tensor(name) for layer, name in self.weight_names.items()}

    def state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Model k's ConvNet state_dict (copies on the CPU)."""
        return {n: t[k].detach().cpu().clone() for n, t in {**self.params, **self.buffers}.items()}

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the models at positions `keep` (freezing the others out of the stack)."""
        self.params = {n: p.detach()[keep].requires_grad_() for n, p in self.params.items()}
        self.buffers = {n: b[keep] for n, b in self.buffers.items()}

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def finite(self) -> torch.Tensor:
        """(K,) bool: every parameter of model k is finite."""
        ok = [torch.isfinite(p.detach()).flatten(1).all(1) for p in self.params.values()]
        return torch.stack(ok).all(0)

    def tensor(self, name: str) -> torch.Tensor | None:
        """The stacked parameter or buffer of that ConvNet name (None if the net has none)."""
        return self.params.get(name, self.buffers.get(name))

    def forward(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """Logits (K, N, 10) of every model on the same images x (N, 3, 32, 32)."""
        k = len(self)
        for i, layer in enumerate(CONV_LAYERS):
            x = self._block(layer, x, training, groups=1 if i == 0 else k)
        x = x.reshape(x.shape[0], k, -1).transpose(0, 1)  # (K, N, C*4*4), ConvNet's flatten(1)
        w, b = self.tensor("fc.weight"), self.tensor("fc.bias")
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))

    def _conv_weight(self, layer: str) -> torch.Tensor:
        if self.norm != "weight":
            return self.tensor(f"{layer}.conv.weight")
        # g (K, C, 1, 1, 1), v (K, C, Cin, 3, 3)
        g, v = self.tensor(f"{layer}.{WN_G}"), self.tensor(f"{layer}.{WN_V}")
        return v * (g / channel_norms(v, lead=2))  # model.WeightNorm of each model

    def _block(self, layer: str, x: torch.Tensor, training: bool, groups: int) -> torch.Tensor:
        """ConvBlock of every model: conv3x3 -> norm -> ReLU -> 2x2 max-pool."""
        w = self._conv_weight(layer)
        bias = self.tensor(f"{layer}.conv.bias")
        x = F.conv2d(x, w.flatten(0, 1), None if bias is None else bias.flatten(),
                     padding=1, groups=groups)
        return F.max_pool2d(torch.relu(self._norm(layer, x, training)), 2)

    def _norm(self, layer: str, x: torch.Tensor, training: bool) -> torch.Tensor:
        if self.norm in ("none", "weight"):
            return x
        k = len(self)
        gain, shift = self.tensor(f"{layer}.norm.weight"), self.tensor(f"{layer}.norm.bias")
        gain = None if gain is None else gain.flatten()  # None: no affine (scale_invariant)
        shift = None if shift is None else shift.flatten()
        x = x.to(self.dtype)  # normalization in the parameters' precision also under bf16 autocast
        if self.norm == "batch":
            b = self.buffers
            if training:
                b[f"{layer}.norm.num_batches_tracked"] += 1
            return F.batch_norm(x, b[f"{layer}.norm.running_mean"].view(-1),
                                b[f"{layer}.norm.running_var"].view(-1), gain, shift,
                                training, BN_MOMENTUM, NORM_EPS)
        groups = k if self.norm == "layer" else x.shape[1]  # layer: one group per model
        return F.group_norm(x, groups, gain, shift, NORM_EPS)

    @torch.no_grad()
    def project_(self) -> None:
        """model.project_ for every model: each scale-invariant group of a normalized weight
        (output unit, or the whole layer for layer norm) divided by its norm."""
        for layer in self.normalized:
            w = self.params[self.weight_names[layer]]
            whole = layer in self.whole_layer
            norms = torch.vmap(lambda t, whole=whole: unit_norms(t, whole))(w).clamp_min(NORM_FLOOR)
            w.div_(norms.view(len(self), -1, *[1] * (w.dim() - 2)))

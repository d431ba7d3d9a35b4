"""Optimizers by name, and the one place where L2 and the projection update are applied.

Mapping of the paper's penalty l2*||w||^2 onto torch.optim (wd = 2*l2, TrialConfig.weight_decay):
- sgd, momentum, adam: `weight_decay=wd` in torch.optim adds wd*w to the gradient before
  momentum / Adam's normalization, i.e. exactly the gradient of the coupled L2 penalty.
- adamw: `weight_decay=wd` is decoupled: w <- w - lr*wd*w after Adam's normalized step
  (Loshchilov & Hutter 2019), the same per-step shrink factor as SGD with L2.
Only conv/linear weights are decayed (per `l2_scope`), never normalization gains or biases.
"""
from __future__ import annotations

import torch

from .config import TrialConfig
from .model import ConvNet, decayed_weights, normalized_weights, unit_norms, whole_layer_group
from .theory import ADAM_BETAS


def param_groups(model: ConvNet, cfg: TrialConfig) -> list[dict]:
    """Two groups: decayed weights (weight_decay = 2*l2) and everything else (no decay)."""
    decayed = list(decayed_weights(model, cfg.l2_scope).values())
    decayed_ids = {id(p) for p in decayed}
    rest = [p for p in model.parameters() if id(p) not in decayed_ids and p.requires_grad]
    return [
        {"params": decayed, "weight_decay": cfg.weight_decay, "name": "decayed"},
        {"params": rest, "weight_decay": 0.0, "name": "not_decayed"},
    ]


def build_optimizer(model: ConvNet, cfg: TrialConfig) -> torch.optim.Optimizer:
    """torch.optim optimizer for cfg.optimizer with L2 mapped as in the module docstring."""
    groups = param_groups(model, cfg)
    if cfg.optimizer in ("sgd", "momentum"):
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=ADAM_BETAS)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=ADAM_BETAS)


@torch.no_grad()
def project_(model: ConvNet) -> None:
    """Direct weight-normalization update (van Laarhoven 2017): w_u <- w_u/||w_u|| for each
    output unit u; for layer norm the whole layer is the unit (see whole_layer_group)."""
    for name, weight in normalized_weights(model).items():
        whole = whole_layer_group(model, name)
        norms = unit_norms(weight, whole).clamp_min(1e-12)
        weight.div_(norms.view(-1, *([1] * (weight.dim() - 1))) if not whole else norms)


def after_step(model: ConvNet, cfg: TrialConfig) -> None:
    """What follows every optimizer step: the projection for update='projection'."""
    if cfg.update == "projection":
        project_(model)

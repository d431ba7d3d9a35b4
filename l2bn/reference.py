"""The torch.optim reference: the study's update rules on one nn.Module ConvNet.

Training uses l2bn/optim.py's StackedOptimizer on a stack of K models; this module is the
conventional pipeline it is tested equal to, model by model (tests/test_fused.py), as HFTA
tests its fused Adam against torch.optim, and the baseline of benchmarks/train_throughput.py.
L2 maps onto torch.optim as in l2bn/optim.py's docstring (weight_decay = 2*l2, coupled for
sgd, momentum and adam, decoupled for adamw; only the `l2_scope` weights decayed).
"""
from __future__ import annotations

import torch

from .config import TrialConfig
from .model import ConvNet, decayed_weights, project_
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


def after_step(model: ConvNet, cfg: TrialConfig) -> None:
    """What follows every torch.optim step: the projection for update='projection' (training's
    own is l2bn/train.py's after_step, on the stack)."""
    if cfg.update == "projection":
        project_(model)

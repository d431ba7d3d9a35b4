"""Pure functions of (optimizer, lr, l2, momentum, betas): the theory's predictions.

All formulas are derived in docs/theory.md (van Laarhoven 2017; Wan et al. 2020, Thm. 3;
Kosson et al. 2023), with wd = 2*l2 because the paper's penalty is l2*||w||^2.
They work on floats and on numpy arrays alike.
"""
from __future__ import annotations

import numpy as np

ADAM_BETAS = (0.9, 0.999)
SGD_FAMILY = ("sgd", "momentum")
ADAM_FAMILY = ("adam", "adamw")


def _unknown_optimizer(optimizer: str) -> ValueError:
    """The error for an optimizer the theory has no formula for."""
    return ValueError(f"unknown optimizer {optimizer!r}; expected one of "
                      f"{list(SGD_FAMILY + ADAM_FAMILY)}")


def conv_fan_in(layer: str, width):
    """Fan-in d of one output unit of the ConvNet's conv layers (3x3 kernels, channels
    3 -> w -> 2w -> 4w; l2bn/model.py, checked against it in the tests). Torch-free, so the
    analysis can use it."""
    channels_in = {"conv1": 3, "conv2": width, "conv3": 2 * np.asarray(width)}[layer]
    return 9 * np.asarray(channels_in, dtype=float)


def group_size(layer: str, width, norm):
    """Size d of one scale-invariant group of a conv layer: one output channel's fan-in
    (batch, instance, weight norm), or the whole layer, C_out x fan-in, for layer norm, which
    pools all channels (docs/theory.md#scale-invariance). Torch-free; `norm` may be an array of
    norms, one per width."""
    channels_out = {"conv1": 1, "conv2": 2, "conv3": 4}[layer] * np.asarray(width, dtype=float)
    return conv_fan_in(layer, width) * np.where(np.asarray(norm) == "layer", channels_out, 1.0)


def balance_exponent(optimizer: str) -> int:
    """k such that (measured/predicted angular update)^k is the ratio of the two terms of the
    norm balance at equilibrium (the update's growth of ||w||^2 over L2's shrinkage; 1 at
    equilibrium): angle^2 = 2*lr*wd*c for the SGD family and adamw, angle ~ ||w||^-1 with
    ||w||^3 ~ 1/wd for adam with coupled L2 (docs/theory.md#equilibrium-table)."""
    return 3 if optimizer == "adam" else 2


def weight_decay(l2):
    """PyTorch-style weight decay for the paper's penalty l2*||w||^2: its gradient is 2*l2*w."""
    return 2.0 * np.asarray(l2, dtype=float)


def ema_noise_rms(beta: float = ADAM_BETAS[0]) -> float:
    """RMS of an exponential moving average (weight 1-beta) of white unit-variance noise,
    sqrt((1-beta)/(1+beta)): Adam's per-coordinate step m_hat/sqrt(v_hat) under white
    gradients, 0.229 for beta1 = 0.9 (docs/theory.md#deriving-the-table, the lemma)."""
    return float(np.sqrt((1 - beta) / (1 + beta)))


def equilibrium_angular_update(optimizer: str, lr, l2, momentum: float = 0.0,
                               betas=ADAM_BETAS, fan_in=None, grad_norm_unit=None):
    """Predicted per-step angular update at equilibrium (docs/theory.md#equilibrium-table).

    sgd: sqrt(2*lr*wd); momentum: sqrt(2*lr*wd/(1+mu)); adamw: sqrt(2*lr*wd*(1-b1)/(1+b1));
    adam with coupled L2: sqrt((1-b1)/(1+b1)) * (2*wd*lr^2*d/||g_hat||)^(1/3), which needs the
    size d of the scale-invariant group (group_size: the whole layer for layer norm) and its
    gradient norm at unit weight norm (NaN when they are not given).

    The Adam factor sqrt((1-b1)/(1+b1)) is ours (docs/theory.md#deriving-the-table): with noise-dominated
    gradients Adam's per-coordinate step m/sqrt(v) has RMS sqrt((1-b1)/(1+b1)), not 1, while
    the first moment correlates successive steps so the norm still grows as if each step had
    size lr (the equilibrium ||w|| of the table holds). The same factor appears in the
    table's AdamW row; measured/predicted was 0.22-0.25 without it on CIFAR-10 (= 0.23).
    """
    lr, wd = np.asarray(lr, dtype=float), weight_decay(l2)
    if optimizer == "sgd":
        out = np.sqrt(2 * lr * wd)
    elif optimizer == "momentum":
        out = np.sqrt(2 * lr * wd / (1 + momentum))
    elif optimizer == "adamw":
        b1 = betas[0]
        out = np.sqrt(2 * lr * wd * (1 - b1) / (1 + b1))
    elif optimizer == "adam":
        if fan_in is None or grad_norm_unit is None:
            out = np.full(np.broadcast(lr, wd).shape, np.nan)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                g = np.asarray(grad_norm_unit, dtype=float)
                out = ema_noise_rms(betas[0]) * np.cbrt(2 * wd * lr**2 * fan_in / g)
    else:
        raise _unknown_optimizer(optimizer)
    return out if out.ndim else float(out)


def effective_lr_proxy(optimizer: str, lr, l2):
    """The quantity test error should depend on alone, up to constants (docs/theory.md#iso-lines).

    sgd/momentum: lr*l2 (iso-lines lr*l2 = const); adam with coupled L2: (lr^2*l2)^(1/3);
    adamw: lr*l2 (decoupled decay behaves like SGD's). Monotone in the predicted
    equilibrium angular update, so it orders cells the same way.
    """
    lr, l2 = np.asarray(lr, dtype=float), np.asarray(l2, dtype=float)
    out = np.cbrt(lr**2 * l2) if optimizer == "adam" else lr * l2
    return out if out.ndim else float(out)


def iso_slope(optimizer: str) -> float:
    """The theory's s in log(lr) + s*log(l2) = const: 1 for SGD-like, 1/2 for Adam + L2."""
    return 0.5 if optimizer == "adam" else 1.0


def measured_effective_lr(optimizer: str, lr, unit_norm):
    """Measured effective LR from the weight norm: lr/||w||^2 (SGD family), lr/||w|| (Adam)."""
    power = 1.0 if optimizer in ADAM_FAMILY else 2.0
    out = np.asarray(lr, dtype=float) / np.asarray(unit_norm, dtype=float) ** power
    return out if out.ndim else float(out)


def equilibrium_norm(optimizer: str, lr, l2, momentum: float = 0.0, fan_in=None,
                     grad_norm_unit=None):
    """Equilibrium ||w|| of one scale-invariant group (docs/theory.md#equilibrium-table):
    sgd/momentum: (lr*||g_hat||^2/(2*wd*(1-mu)))^(1/4); adam with coupled L2:
    (lr*sqrt(d)*||g_hat||/(2*wd))^(1/3); adamw: (lr*d/(2*wd))^(1/2). d is the group's size
    (group_size), ||g_hat|| its gradient norm at unit weight norm; inf when l2 = 0."""
    lr, wd = np.asarray(lr, dtype=float), weight_decay(l2)
    with np.errstate(divide="ignore", invalid="ignore"):
        if optimizer in SGD_FAMILY:
            g = np.asarray(grad_norm_unit, dtype=float)
            out = (lr * g**2 / (2 * wd * (1 - momentum))) ** 0.25
        elif optimizer == "adam":
            g = np.asarray(grad_norm_unit, dtype=float)
            out = np.cbrt(lr * np.sqrt(fan_in) * g / (2 * wd))
        elif optimizer == "adamw":
            out = np.sqrt(lr * np.asarray(fan_in, dtype=float) / (2 * wd))
        else:
            raise _unknown_optimizer(optimizer)
    return out if np.ndim(out) else float(out)


def relaxation_steps(optimizer: str, lr, l2, momentum: float = 0.0,
                     fan_in=None, grad_norm_unit=None):
    """Steps to reach equilibrium: 1/(lr*wd) for SGD, (1-mu)/(lr*wd) with momentum
    (docs/theory.md#relaxation-times);
    inf when l2 = 0 (no equilibrium).

    Adam with coupled L2 divides the decay term by sqrt(v) ~ ||g_hat||/(||w||*sqrt(d)), so
    ||w|| relaxes at rate lr*wd*sqrt(d)*||w_eq||/||g_hat||, with ||w_eq||^3 =
    lr*sqrt(d)*||g_hat||/(2*wd) (docs/theory.md#equilibrium-table); that needs d and ||g_hat|| (else the
    SGD form is returned as a rough guide).
    """
    lr, wd = np.asarray(lr, dtype=float), weight_decay(l2)
    with np.errstate(divide="ignore", invalid="ignore"):
        if optimizer == "adam" and fan_in is not None and grad_norm_unit is not None:
            g, root_d = np.asarray(grad_norm_unit, dtype=float), np.sqrt(fan_in)
            w_eq = equilibrium_norm("adam", lr, l2, fan_in=fan_in, grad_norm_unit=g)
            out = np.where(wd > 0, g / (lr * wd * root_d * w_eq), np.inf)
        else:
            out = (1.0 - momentum) / (lr * wd)
    return out if np.ndim(out) else float(out)


def layer_relaxation_steps(optimizer: str, lr, l2, layer: str, width, norm, grad_norm_unit=None,
                           momentum: float = 0.0):
    """relaxation_steps of one conv layer: Adam's from the layer's group size (group_size, the
    whole layer for layer norm) and its gradient norm at unit weight norm; the other
    optimizers' (and Adam's without that gradient norm: the SGD form) do not depend on it."""
    return relaxation_steps(optimizer, lr, l2, momentum, fan_in=group_size(layer, width, norm),
                            grad_norm_unit=grad_norm_unit)


def slowest_relaxation_steps(optimizer: str, lr, l2, width, norm, grad_norm_unit_per_layer=None,
                             momentum: float = 0.0):
    """The slowest conv layer's relaxation time (docs/theory.md#relaxation-times): the max of
    layer_relaxation_steps over the layers of `grad_norm_unit_per_layer` ({layer: gradient norm
    at unit weight norm}); without it, the layer-independent form."""
    if not grad_norm_unit_per_layer:
        return relaxation_steps(optimizer, lr, l2, momentum)
    out = np.max([layer_relaxation_steps(optimizer, lr, l2, layer, width, norm, g, momentum)
                  for layer, g in grad_norm_unit_per_layer.items()], axis=0)
    return out if np.ndim(out) else float(out)

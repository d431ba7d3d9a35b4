"""Measured per-layer quantities: weight norms, relative and angular updates, effective LR.

Sums are kept on the device and read once per epoch, so measuring adds no host sync per step.
"""
from __future__ import annotations

import numpy as np
import torch

from . import theory
from .model import scale_groups, unit_norms

DEAD_RELATIVE = 0.01  # a group turning < 1% of its layer's angle over an epoch is "dead"
ANGLE_METRICS = ("angular_update", "angular_update_group_median", "dead_fraction")


def vector_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle between corresponding rows of a and b, in radians: atan2(|a^b|, a.b) in float64,
    with |a^b| = |a| * |b - (a.b/|a|^2) a| (arccos of a float32 cosine is biased at 1e-4 rad)."""
    a, b = a.double(), b.double()
    dot = (a * b).sum(1)
    aa = (a * a).sum(1).clamp_min(1e-300)
    cross = (b - (dot / aa)[:, None] * a).norm(dim=1) * aa.sqrt()
    return torch.atan2(cross, dot)


def group_angles(before: torch.Tensor, after: torch.Tensor, whole_layer: bool = False) -> torch.Tensor:
    """Per scale-invariant group (output unit, or the layer for layer norm), the angle between
    w_t and w_t+1 (radians, float64)."""
    return vector_angles(scale_groups(before, whole_layer), scale_groups(after, whole_layer))


def angular_update(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Angle between the whole layer before and after the step (all groups flattened, so
    groups count by their norm): the quantity the equilibrium fixes, since each group's
    gradient is orthogonal to the group (docs/theory.md#equilibrium-table)."""
    return vector_angles(before.reshape(1, -1), after.reshape(1, -1))[0]


def relative_update(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """||w_t+1 - w_t|| / ||w_t|| over the whole layer."""
    return (after - before).norm() / before.norm().clamp_min(1e-30)


class UpdateTracker:
    """Accumulates per-step update statistics for named weights over one epoch."""

    def __init__(self, weights: dict[str, torch.Tensor], whole_layer: set[str] = frozenset()):
        self.weights = weights
        self.whole_layer = whole_layer
        self.before: dict[str, torch.Tensor] = {}
        self.reset()

    def reset(self) -> None:
        """Start a new epoch."""
        self.steps = 0
        self.sums = {name: {} for name in self.weights}

    def snapshot(self) -> None:
        """Remember the weights (and gradient norm at unit scale) before an optimizer step."""
        for name, w in self.weights.items():
            self.before[name] = w.detach().clone()
            if w.grad is not None:
                # By scale invariance the gradient at w/||w|| is grad(w)*||w|| (claim 2).
                whole = name in self.whole_layer
                g_hat = (unit_norms(w.grad, whole) * unit_norms(w, whole)).mean()
                self._add(name, "grad_norm_unit", g_hat)

    @torch.no_grad()
    def update(self) -> None:
        """Add this step's update statistics (call after the step and any projection)."""
        for name, w in self.weights.items():
            before = self.before[name]
            self._add(name, "rel_update", relative_update(before, w))
            self._add(name, "angle_sq", angular_update(before, w) ** 2)
            self._add(name, "group_angle_sq", group_angles(before, w, name in self.whole_layer) ** 2)
        self.steps += 1

    def _add(self, name: str, key: str, value: torch.Tensor) -> None:
        sums = self.sums[name]
        sums[key] = sums[key] + value if key in sums else value.detach().clone()

    def means(self) -> dict[str, dict[str, float | np.ndarray]]:
        """Per-name per-key means over the epoch's steps (one host read per value; per-group
        sums come back as arrays)."""
        n = max(self.steps, 1)
        return {name: {k: float(v) / n if v.dim() == 0 else v.cpu().numpy() / n
                       for k, v in sums.items()} for name, sums in self.sums.items()}


def angle_columns(name: str, m: dict) -> dict[str, float]:
    """<name>_angular_update: RMS over the epoch's steps of the whole-layer angle (the theory
    fixes the mean squared angle); _angular_update_group_median: median over groups of each
    group's RMS angle; _dead_fraction: share of groups whose RMS angle is below DEAD_RELATIVE
    of the layer's (zero gradient: the group only shrinks under L2, its direction is frozen)."""
    if "angle_sq" not in m:
        return {f"{name}_{k}": float("nan") for k in ANGLE_METRICS}
    layer = float(np.sqrt(m["angle_sq"]))
    groups = np.sqrt(m["group_angle_sq"])
    return {f"{name}_angular_update": layer,
            f"{name}_angular_update_group_median": float(np.median(groups)),
            f"{name}_dead_fraction": float((groups < DEAD_RELATIVE * layer).mean())}



def layer_metrics(cfg, weights: dict[str, torch.Tensor], tracker: UpdateTracker,
                  normalized: set[str]) -> dict[str, float]:
    """Flat per-layer columns: <layer>_w_norm, _unit_norm, _rel_update, angle_columns(),
    _grad_norm_unit, _eff_lr (measured) and _pred_angular_update (theory's equilibrium value
    for the layer's group size, NaN where it does not apply: layers without a normalization,
    the projection update, l2 = 0)."""
    row: dict[str, float] = {}
    means = tracker.means()
    for name, w in weights.items():
        units = unit_norms(w, name in tracker.whole_layer).cpu().numpy()
        m = means[name]
        whole = name in tracker.whole_layer
        size = w.numel() if whole else w[0].numel()  # the scale-invariant group's size d
        row[f"{name}_w_norm"] = float(w.detach().norm())
        row[f"{name}_unit_norm"] = float(units.mean())
        row[f"{name}_rel_update"] = m.get("rel_update", float("nan"))
        row.update(angle_columns(name, m))
        row[f"{name}_grad_norm_unit"] = m.get("grad_norm_unit", float("nan"))
        row[f"{name}_eff_lr"] = float(theory.measured_effective_lr(cfg.optimizer, cfg.lr, units).mean())
        predicted = float("nan")
        if name in normalized and cfg.update == "l2" and cfg.l2 > 0:
            predicted = float(theory.equilibrium_angular_update(
                cfg.optimizer, cfg.lr, cfg.l2, momentum=cfg.momentum, fan_in=size,
                grad_norm_unit=row[f"{name}_grad_norm_unit"]))
        row[f"{name}_pred_angular_update"] = predicted
    return row

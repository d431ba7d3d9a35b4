"""Measured per-layer quantities: weight norms, relative and angular updates, effective LR.

Sums are kept on the device and read once per epoch, so measuring adds no host sync per step.
"""
from __future__ import annotations

import numpy as np
import torch

from . import theory
from .model import NORM_FLOOR, scale_groups, unit_norms
from .schema import layer_column

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


def grad_norm_unit(weight: torch.Tensor, grad: torch.Tensor, whole_layer: bool = False) -> torch.Tensor:
    """Mean over scale-invariant groups of the gradient norm at unit weight norm: by scale
    invariance the gradient at w/||w|| is grad(w)*||w|| (docs/theory.md#scale-invariance)."""
    return (unit_norms(grad, whole_layer) * unit_norms(weight, whole_layer)).mean()


class UpdateTracker:
    """Accumulates per-step update statistics for named weights over one epoch.

    With `stacked=True` each weight is a (K, ...) stack of K models' weights (l2bn/stack.py)
    and every statistic is the same function vmapped over the K models: (K,) sums.

    Besides the update statistics: `grad_autocorr`, the cosine between the layer's loss
    gradient (`.grad` at `snapshot`, before the optimizer adds L2) and the previous step's,
    over the epoch's consecutive step pairs (the first step of an epoch is not paired with the
    last of the previous one, so a resumed epoch measures the same); and `adam_step_sq`, the
    optimizer's mean squared normalized step handed to `update` (StackedOptimizer.step_sq).
    """

    def __init__(self, weights: dict[str, torch.Tensor], whole_layer: set[str] = frozenset(),
                 stacked: bool = False):
        self.weights = weights
        self.whole_layer = whole_layer
        self.stacked = stacked
        self.before: dict[str, torch.Tensor] = {}
        self.reset()

    def reset(self) -> None:
        """Start a new epoch."""
        self.steps = 0
        self.sums = {name: {} for name in self.weights}
        self.counts = {name: {} for name in self.weights}
        self.last_grad: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def snapshot(self) -> None:
        """Remember the weights (and gradient norm at unit scale) before an optimizer step."""
        for name, w in self.weights.items():
            self.before[name] = w.detach().clone()
            if w.grad is not None:
                whole = name in self.whole_layer
                g_hat = self._apply(lambda v, g, whole=whole: grad_norm_unit(v, g, whole),
                                    w.detach(), w.grad)
                self._add(name, "grad_norm_unit", g_hat)
                self._autocorr(name, w.grad.detach())

    def _autocorr(self, name: str, grad: torch.Tensor) -> None:
        """Add cos(g_t, g_t-1) of the whole flattened gradient; remember g_t (a copy: the
        caller may reuse the .grad tensor)."""
        rows = grad.reshape(len(grad) if self.stacked else 1, -1).clone()
        norm = torch.linalg.vector_norm(rows, dim=1)
        if name in self.last_grad:
            last, last_norm = self.last_grad[name]
            cos = torch.linalg.vecdot(rows, last) / (norm * last_norm).clamp_min(1e-30)
            self._add(name, "grad_autocorr", cos if self.stacked else cos[0])
        self.last_grad[name] = rows, norm

    @torch.no_grad()
    def update(self, step_sq: dict[str, torch.Tensor] | None = None) -> None:
        """Add this step's update statistics (call after the step and any projection);
        `step_sq`: per weight name, the optimizer's mean squared normalized step, if any."""
        for name, w in self.weights.items():
            before, after, whole = self.before[name], w.detach(), name in self.whole_layer
            self._add(name, "rel_update", self._apply(relative_update, before, after))
            self._add(name, "angle_sq", self._apply(angular_update, before, after) ** 2)
            self._add(name, "group_angle_sq", self._apply(
                lambda a, b, whole=whole: group_angles(a, b, whole), before, after) ** 2)
        for name, value in (step_sq or {}).items():
            self._add(name, "adam_step_sq", value)
        self.steps += 1

    def _apply(self, fn, *tensors: torch.Tensor) -> torch.Tensor:
        """fn on one model's tensors, or vmapped over the first dimension of a stack."""
        return torch.vmap(fn)(*tensors) if self.stacked else fn(*tensors)

    def select(self, keep: torch.Tensor, weights: dict[str, torch.Tensor]) -> None:
        """Keep the stacked models at positions `keep`; `weights` are the stack's new tensors."""
        self.weights = weights
        self.sums = {name: {k: v[keep] for k, v in sums.items()} for name, sums in self.sums.items()}
        self.last_grad = {name: (g[keep], n[keep]) for name, (g, n) in self.last_grad.items()}

    def stacked_means(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per-name per-key means over the epoch's steps (step pairs for grad_autocorr), as
        (K,) tensors left on the device."""
        return {name: {k: v / self.counts[name][k] for k, v in sums.items()}
                for name, sums in self.sums.items()}

    def _add(self, name: str, key: str, value: torch.Tensor) -> None:
        sums, counts = self.sums[name], self.counts[name]
        sums[key] = sums[key] + value if key in sums else value.detach().clone()
        counts[key] = counts.get(key, 0) + 1

    def means(self) -> dict[str, dict[str, float | np.ndarray]]:
        """Per-name per-key means over the epoch's steps, step pairs for grad_autocorr (one
        host read per value; per-group sums come back as arrays)."""
        return {name: {k: float(v) / self.counts[name][k] if v.dim() == 0
                       else v.cpu().numpy() / self.counts[name][k]
                       for k, v in sums.items()} for name, sums in self.sums.items()}


def angle_columns(name: str, m: dict) -> dict[str, float]:
    """<name>_angular_update: RMS over the epoch's steps of the whole-layer angle (the theory
    fixes the mean squared angle); _angular_update_group_median: median over groups of each
    group's RMS angle; _dead_fraction: share of groups whose RMS angle is below DEAD_RELATIVE
    of the layer's (zero gradient: the group only shrinks under L2, its direction is frozen)."""
    if "angle_sq" not in m:
        return {layer_column(name, k): float("nan") for k in ANGLE_METRICS}
    layer = float(np.sqrt(m["angle_sq"]))
    groups = np.sqrt(m["group_angle_sq"])
    return {layer_column(name, "angular_update"): layer,
            layer_column(name, "angular_update_group_median"): float(np.median(groups)),
            layer_column(name, "dead_fraction"): float((groups < DEAD_RELATIVE * layer).mean())}


def layer_metrics(cfg, weights: dict[str, torch.Tensor], tracker: UpdateTracker,
                  normalized: set[str], means: dict[str, dict] | None = None) -> dict[str, float]:
    """Flat per-layer columns: <layer>_w_norm, _unit_norm, _rel_update, angle_columns(),
    _grad_norm_unit, _eff_lr (measured), _pred_angular_update (theory's equilibrium value
    for the layer's group size, NaN where it does not apply: layers without a normalization,
    the projection update, l2 = 0), _adam_step_rms (RMS over steps and coordinates of Adam's
    normalized step; NaN without one) and _grad_autocorr (mean cosine of successive loss
    gradients). `means`: one model's tracker means when the tracker is stacked (default
    tracker.means())."""
    row: dict[str, float] = {}
    means = tracker.means() if means is None else means
    for name, w in weights.items():
        units = unit_norms(w, name in tracker.whole_layer).cpu().numpy()
        m = means[name]
        whole = name in tracker.whole_layer
        size = w.numel() if whole else w[0].numel()  # the scale-invariant group's size d
        row[layer_column(name, "w_norm")] = float(w.detach().norm())
        row[layer_column(name, "unit_norm")] = float(units.mean())
        row[layer_column(name, "rel_update")] = m.get("rel_update", float("nan"))
        row.update(angle_columns(name, m))
        row[layer_column(name, "grad_norm_unit")] = m.get("grad_norm_unit", float("nan"))
        # A unit whose weights are exactly 0 (dead, model.NORM_FLOOR) has no direction to move.
        live = units[units > NORM_FLOOR]
        eff_lr = theory.measured_effective_lr(cfg.optimizer, cfg.lr, live)
        row[layer_column(name, "eff_lr")] = float(eff_lr.mean()) if live.size else float("nan")
        predicted = float("nan")
        if name in normalized and cfg.update == "l2" and cfg.l2 > 0:
            predicted = float(theory.equilibrium_angular_update(
                cfg.optimizer, cfg.lr, cfg.l2, momentum=cfg.momentum, fan_in=size,
                grad_norm_unit=row[layer_column(name, "grad_norm_unit")]))
        row[layer_column(name, "pred_angular_update")] = predicted
        row[layer_column(name, "adam_step_rms")] = float(np.sqrt(m.get("adam_step_sq", np.nan)))
        row[layer_column(name, "grad_autocorr")] = float(m.get("grad_autocorr", np.nan))
    return row

"""Synthetic sweep results in the sweep runner's Parquet schema, for tests and benchmarks.

The final test error of each grid point is a function the caller chooses (e.g. of lr*l2),
plus Gaussian seed noise; the per-layer dynamics follow the SGD equilibrium picture of
docs/theory.md (weight norm relaxing to its equilibrium over relaxation_steps), with white
gradients (no step-to-step autocorrelation; Adam's step RMS at its noise value).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np

from l2bn import __version__, theory
from l2bn.config import TrialConfig
from l2bn.schema import LAYERS, Row, config_columns, diverged_row, final_row, layer_column
from l2bn.store import ResultStore

from .checks.premise import CHANCE_ERROR

ErrorFn = Callable[[str, str, str, float, float], float]  # (optimizer, norm, update, lr, l2)
SYNTHETIC_PROVENANCE = {"l2bn_version": __version__, "torch_version": "synthetic",
              "torchvision_version": "synthetic", "python_version": "3", "device_name": "none",
              "hostname": "synthetic", "git_rev": "synthetic"}
GRAD_NORM_UNIT = 1.0


@dataclass(frozen=True)
class SyntheticSweep:
    """A grid of trials whose final test error is error(optimizer, norm, update, lr, l2)."""

    error: ErrorFn
    optimizers: tuple[str, ...] = ("sgd",)
    norms: tuple[str, ...] = ("batch",)
    updates: tuple[str, ...] = ("l2",)
    lrs: tuple[float, ...] = tuple(np.logspace(-2, 0, 5))
    l2s: tuple[float, ...] = tuple(np.logspace(-4, -2, 5))
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 3
    steps_per_epoch: int = 1000
    noise: float = 0.005
    diverge_lr: float = math.inf  # trials with lr >= this diverge in their last epoch
    extra: dict = field(default_factory=dict)  # other TrialConfig fields, e.g. width
    points: tuple[tuple[float, float], ...] | None = None  # (lr, l2) pairs instead of lrs x l2s

    def configs(self) -> list[TrialConfig]:
        """Every valid grid point x seed (projection needs a normalization)."""
        pairs = self.points if self.points is not None else tuple(product(self.lrs, self.l2s))
        grid = product(self.optimizers, self.norms, self.updates, pairs, self.seeds)
        return [TrialConfig(optimizer=o, norm=n, update=u, lr=float(lr), l2=float(l2), seed=s,
                            epochs=self.epochs, data="synthetic", **self.extra)
                for o, n, u, (lr, l2), s in grid if not (n == "none" and u == "projection")]


def synthetic_layer_values(cfg: TrialConfig, step: int) -> dict[str, float]:
    """Made-up per-layer metric columns at a given step (SGD picture: norm relaxes to
    equilibrium)."""
    row: dict[str, float] = {}
    fan_ins = {layer: float(theory.conv_fan_in(layer, cfg.width)) for layer in LAYERS[:3]}
    adam_step_rms = theory.ema_noise_rms() if cfg.optimizer in theory.ADAM_FAMILY else math.nan
    for layer in LAYERS:
        if cfg.update == "projection" and cfg.norm != "none" and layer != "fc":
            norm = 1.0
        elif cfg.l2 > 0:  # the SGD equilibrium for every optimizer (module docstring)
            eq = theory.equilibrium_norm("sgd", cfg.lr, cfg.l2, grad_norm_unit=GRAD_NORM_UNIT)
            relax = theory.relaxation_steps(cfg.optimizer, cfg.lr, cfg.l2, cfg.momentum)
            norm = eq + (1.0 - eq) * math.exp(-step / relax)
        else:
            norm = math.sqrt(1.0 + 1e-3 * cfg.lr * step)
        eff_lr = float(theory.measured_effective_lr(cfg.optimizer, cfg.lr, norm))
        pred = math.nan
        if layer != "fc" and cfg.norm != "none" and cfg.update == "l2":
            pred = theory.equilibrium_angular_update(
                cfg.optimizer, cfg.lr, cfg.l2, cfg.momentum, fan_in=fan_ins[layer],
                grad_norm_unit=GRAD_NORM_UNIT)
        values = {}
        if layer != "fc":  # more channels die as the angular update grows (a made-up shape)
            angle = cfg.lr * GRAD_NORM_UNIT / norm**2
            values["dead_fraction"] = angle / (1.0 + angle)
        values |= {"w_norm": norm * 4.0, "unit_norm": norm,
                   "rel_update": cfg.lr * GRAD_NORM_UNIT / norm**2,
                   "angular_update": cfg.lr * GRAD_NORM_UNIT / norm**2,
                   "grad_norm_unit": GRAD_NORM_UNIT, "eff_lr": eff_lr, "pred_angular_update": pred,
                   "adam_step_rms": adam_step_rms, "grad_autocorr": 0.0}
        row.update({layer_column(layer, k): v for k, v in values.items()})
    return row


def trial_rows(cfg: TrialConfig, final_error: float, diverged: bool,
               steps_per_epoch: int) -> list[Row]:
    """History rows of one trial in the runner's schema; a diverged trial's last epoch is a
    diverged row (nothing measured), as the trainer writes it."""
    history = []
    for epoch in range(1, cfg.epochs + 1):
        step = epoch * steps_per_epoch
        error = final_error + (CHANCE_ERROR - final_error) * (0.5 ** (epoch - 1)) * 0.5
        error = final_error if epoch == cfg.epochs else error
        history.append({**config_columns(cfg), "epoch": epoch, "step": step,
                        "steps_per_epoch": steps_per_epoch,
                        "train_images": steps_per_epoch * cfg.batch_size,
                        "train_loss": 2 * error, "train_error": 0.9 * error,
                        "test_loss": 2.2 * error, "test_error": error,
                        "epoch_time_s": 1.0, "time_s": float(epoch), "images_per_s": 1e4,
                        "diverged": False, **synthetic_layer_values(cfg, step), **SYNTHETIC_PROVENANCE})
    if diverged:
        history[-1] = diverged_row(cfg, cfg.epochs, history[-1]["step"], SYNTHETIC_PROVENANCE)
    return history


def write_trial(store: ResultStore, history: list[Row]) -> None:
    """history/<id>.parquet and trials/<id>.parquet through the sweep runner's writer."""
    store.write_history(history)
    final = final_row(history)
    status = "diverged" if final["diverged"] else "completed"
    store.write_trial(final, status, wall_time_s=float(len(history)))


def write_sweep(root: Path | str, sweep: SyntheticSweep, rng_seed: int = 0) -> list[str]:
    """Write every trial of the sweep under root; return the trial ids."""
    root, rng = Path(root).resolve(), np.random.default_rng(rng_seed)
    store = ResultStore(str(root.parent), root.name)
    ids = []
    for cfg in sweep.configs():
        mean = sweep.error(cfg.optimizer, cfg.norm, cfg.update, cfg.lr, cfg.l2)
        error = float(np.clip(mean + sweep.noise * rng.standard_normal(), 0.0, 1.0))
        history = trial_rows(cfg, error, cfg.lr >= sweep.diverge_lr, sweep.steps_per_epoch)
        write_trial(store, history)
        ids.append(cfg.trial_id)
    return ids

"""TrialConfig: the one typed, validated description of a trial, from grid to Parquet row."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import typing
from dataclasses import dataclass, fields
from typing import Any

from .theory import weight_decay

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
NORMS = ("none", "batch", "weight", "layer", "instance")
UPDATES = ("l2", "projection")
L2_SCOPES = ("all", "normalized")
DATA_SOURCES = ("cifar10", "synthetic")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
# Memory layouts of the activations (l2bn/train.py maps them to torch's); channels_last is
# faster than NCHW on CUDA and, measured for K = 1 and fused groups, on CPUs (docs/performance.md).
LAYOUTS = ("channels_last", "nchw")
# Images (train, test) in each data source (l2bn/data.py makes them): n_train/n_test may not
# exceed them, so a row never records more images than its trial trained on.
DATA_SIZES = {"cifar10": (50_000, 10_000), "synthetic": (512, 256)}

# Fields that say where/how a trial runs, not what it computes: left out of the trial id,
# so the same grid point has the same id on a laptop and on a cluster (the layout changes
# float rounding only, no mathematics).
EXECUTION_FIELDS = ("device", "data_dir", "layout")
# Fields added after the first results were written enter the trial id only when they differ
# from these defaults, so every earlier grid point keeps its id (resumes, file names).
ADDED_FIELDS = {"scale_invariant": False, "precision": "fp32", "eval_last": None}
# The fields in which the members of a fused group (one stack of models, l2bn/stack.py) may
# differ: they only set each model's optimizer hyper-parameters, never a tensor's shape.
FUSED_FIELDS = ("lr", "l2")

_CHOICES = {
    "optimizer": OPTIMIZERS,
    "norm": NORMS,
    "update": UPDATES,
    "l2_scope": L2_SCOPES,
    "data": DATA_SOURCES,
    "precision": PRECISIONS,
    "layout": LAYOUTS,
}


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and what was expected."""


@dataclass(frozen=True)
class TrialConfig:
    """One trial of the study. `l2` is lam in the loss term lam*||w||^2 (docs/theory.md)."""

    optimizer: str = "sgd"
    lr: float = 0.1
    l2: float = 5e-4
    norm: str = "batch"
    update: str = "l2"
    l2_scope: str = "all"
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    width: int = 32
    n_train: int | None = None
    n_test: int | None = None
    augment: bool = True
    scale_invariant: bool = False  # classifier frozen at init, norms without affine parameters
    precision: str = "fp32"  # bf16: autocast convs and matmuls, normalization in fp32
    eval_last: int | None = None  # test set evaluated in the last this-many epochs only (None: all)
    data: str = "cifar10"
    data_dir: str | None = None
    device: str = "auto"
    layout: str = "channels_last"  # of the activations: LAYOUTS

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, f.type, getattr(self, f.name)))
        _validate(self)
        _validate_combination(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialConfig:
        """Build from a plain dict, rejecting unknown keys."""
        _check_keys(values)
        return cls(**values)

    def replace(self, **changes: Any) -> TrialConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_row(self) -> dict[str, Any]:
        """Flat dict of every field, for Parquet rows and Ray's param space."""
        return dataclasses.asdict(self)

    @property
    def trial_id(self) -> str:
        """Stable 12-hex id from the science fields (not device or data location)."""
        row = {k: v for k, v in self.to_row().items()
               if k not in EXECUTION_FIELDS and not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])}
        blob = json.dumps(row, sort_keys=True, default=repr).encode()
        return hashlib.sha1(blob).hexdigest()[:12]

    @property
    def weight_decay(self) -> float:
        """PyTorch's weight_decay for this l2 (theory.weight_decay: 2*l2)."""
        return float(weight_decay(self.l2))

    @property
    def momentum(self) -> float:
        """SGD momentum coefficient (0 except for optimizer=momentum)."""
        return 0.9 if self.optimizer == "momentum" else 0.0


def group_key(cfg: TrialConfig) -> str:
    """Configs with the same key can train as one fused group (all fields but lr and l2)."""
    row = {k: v for k, v in cfg.to_row().items() if k not in FUSED_FIELDS}
    return json.dumps(row, sort_keys=True, default=repr)


@functools.cache
def field_types() -> dict[str, tuple[type, bool]]:
    """Each TrialConfig field's base type and whether it may be None (the one type table:
    validation, the CLI and the Parquet schema all read it)."""
    out = {}
    for name, hint in typing.get_type_hints(TrialConfig).items():
        args = typing.get_args(hint)
        base = next(a for a in args if a is not type(None)) if args else hint
        out[name] = (base, type(None) in args)
    return out


def _coerce(name: str, type_name: Any, value: Any) -> Any:
    """Check the value's type against the field's annotation; ints become floats for floats."""
    base, optional = field_types()[name]
    allowed = (base, int) if base is float else (base,)
    ok = (value is None and optional) or (
        isinstance(value, allowed) and not (isinstance(value, bool) and base is not bool))
    if not ok:
        raise ConfigError(
            f"config field '{name}' must be of type {type_name}, got {value!r} "
            f"({type(value).__name__})")
    return float(value) if base is float else value


def check_field(name: str, value: Any) -> None:
    """Validate one field's value on its own: type and range, no cross-field rule (grid axes)."""
    _check_keys([name])
    cfg = TrialConfig()
    field_type = next(f.type for f in fields(TrialConfig) if f.name == name)
    object.__setattr__(cfg, name, _coerce(name, field_type, value))
    _validate(cfg)


def _check_keys(keys) -> None:
    """Reject keys that are not TrialConfig fields, naming them and the allowed ones."""
    known = {f.name for f in fields(TrialConfig)}
    unknown = sorted(set(keys) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; allowed keys: {sorted(known)}")


def _validate(cfg: TrialConfig) -> None:
    """Range checks of single fields; each error names the field and the allowed values."""
    for name, allowed in _CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(
                f"config field '{name}' must be one of {list(allowed)}, got {getattr(cfg, name)!r}")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ConfigError(f"config field 'lr' must be a finite number > 0, got {cfg.lr!r}")
    if not (math.isfinite(cfg.l2) and cfg.l2 >= 0):
        raise ConfigError(f"config field 'l2' must be a finite number >= 0, got {cfg.l2!r}")
    for name in ("epochs", "batch_size", "width"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"config field '{name}' must be an integer >= 1, got {getattr(cfg, name)!r}")
    for name in ("n_train", "n_test", "eval_last"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ConfigError(f"config field '{name}' must be None (all) or an integer >= 1, got {value!r}")
    if cfg.seed < 0:
        raise ConfigError(f"config field 'seed' must be an integer >= 0, got {cfg.seed!r}")
    if cfg.device not in DEVICES and not cfg.device.startswith("cuda:"):
        raise ConfigError(
            f"config field 'device' must be one of {list(DEVICES)} or 'cuda:N', got {cfg.device!r}")


def _validate_combination(cfg: TrialConfig) -> None:
    """Cross-field checks: values that are each valid but not together."""
    for name, size in zip(("n_train", "n_test"), DATA_SIZES[cfg.data], strict=True):
        value = getattr(cfg, name)
        if value is not None and value > size:
            split = "training" if name == "n_train" else "test"
            raise ConfigError(f"config field '{name}' must be at most {size:,} (the {cfg.data} "
                              f"{split} set's size) or None (all), got {value!r}")
    if cfg.norm == "none" and cfg.update == "projection":
        raise ConfigError(
            "config field 'update'='projection' needs a normalization: 'norm' must be one of "
            f"{list(NORMS[1:])}, got 'none'")
    if cfg.scale_invariant and (cfg.norm == "none" or cfg.l2_scope != "normalized"):
        raise ConfigError(
            "config field 'scale_invariant'=True needs a normalization and l2_scope='normalized' "
            "(the frozen classifier must not be decayed), got "
            f"norm={cfg.norm!r}, l2_scope={cfg.l2_scope!r}")
    if cfg.norm == "none" and cfg.l2_scope == "normalized":
        raise ConfigError(
            "config field 'l2_scope'='normalized' needs a normalization: 'norm' must be one of "
            f"{list(NORMS[1:])}, got 'none'")

"""A trial's training budget in optimizer steps, in one place and torch-free: the trainer's
epoch (l2bn/data.py), the analysis (analysis/load.py) and the planner (analysis/plan.py)."""
from __future__ import annotations

from .config import DATA_SIZES


def train_images(data: str, n_train: int | None) -> int:
    """Images one epoch trains on: n_train, or the whole training set of `data` (DATA_SIZES)."""
    return DATA_SIZES[data][0] if n_train is None else n_train


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Steps of one epoch: full batches only (a last partial batch is dropped so batch-norm
    statistics are never computed on a handful of images), and at least one."""
    return max(images // batch_size, 1)


def budget_steps(data: str, n_train: int | None, batch_size: int, epochs: int) -> int:
    """Optimizer steps of the whole budget: steps_per_epoch * epochs."""
    return steps_per_epoch(train_images(data, n_train), batch_size) * epochs

"""train(cfg, report): one trial of the study, no Ray. Also `python -m l2bn.train ...`."""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import torch
import torch.nn.functional as F

from .config import ConfigError, TrialConfig, field_types
from .data import DataError, Split, augment, epoch_batches, load_cifar10, normalize
from .metrics import UpdateTracker, layer_metrics
from .model import ConvNet, layer_weight, normalized_weights, whole_layer_group
from .optim import after_step, build_optimizer, project_
from .provenance import run_info
from .schema import LAYERS, config_columns, diverged_row, final_row

Row = dict[str, Any]
DIVERGENCE_CHECK_EVERY = 50  # steps between host reads of the running loss
# A mean training loss 100x that of chance (ln 10) means the run has blown up even when
# float32 still holds the numbers; such a trial counts as diverged like a NaN one.
DIVERGENCE_LOSS = 100 * math.log(10)


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config field 'device' is {name!r} but CUDA is not available here")
    return torch.device(name)


class Trial:
    """Model, optimizer, data and RNG of one trial; `state()`/`load()` for checkpoints."""

    def __init__(self, cfg: TrialConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.train_set, self.test_set = load_cifar10(
            cfg.data, cfg.data_dir, self.device, cfg.n_train, cfg.n_test)
        self.model = ConvNet(cfg.norm, cfg.width, scale_invariant=cfg.scale_invariant).to(self.device)
        if cfg.update == "projection":
            project_(self.model)  # start on the unit sphere, as every later step will be
        self.optimizer = build_optimizer(self.model, cfg)
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.weights = {n: layer_weight(self.model, n) for n in LAYERS}
        self.normalized = set(normalized_weights(self.model))
        whole = {n for n in self.weights if whole_layer_group(self.model, n)}
        self.tracker = UpdateTracker(self.weights, whole)
        self.epoch, self.step, self.elapsed = 0, 0, 0.0
        self.history: list[Row] = []
        self.info = run_info(self.device)

    def state(self) -> dict[str, Any]:
        """Everything needed to continue after `self.epoch` exactly as if never stopped."""
        # Deep copies: state_dict() returns the live tensors, which training keeps mutating.
        return copy.deepcopy({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "gen": self.gen.get_state(), "epoch": self.epoch, "step": self.step,
            "elapsed": self.elapsed, "history": self.history})

    def load(self, state: dict[str, Any]) -> None:
        """Restore from `state()`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen.set_state(state["gen"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.elapsed, self.history = state["elapsed"], list(state["history"])

    def train_epoch(self) -> dict[str, float] | None:
        """One pass over the training set; None if the loss or weights became non-finite."""
        cfg, model, opt = self.cfg, self.model, self.optimizer
        model.train()
        self.tracker.reset()
        loss_sum = torch.zeros((), device=self.device)
        err_sum = torch.zeros((), device=self.device)
        batches = epoch_batches(len(self.train_set), cfg.batch_size, self.gen, self.device)
        for i, idx in enumerate(batches):
            images = self.train_set.images[idx]
            if cfg.augment:
                images = augment(images, self.gen)
            labels = self.train_set.labels[idx]
            logits = model(normalize(images))
            loss = F.cross_entropy(logits, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            self.tracker.snapshot()
            opt.step()
            after_step(model, cfg)
            self.tracker.update()
            loss_sum += loss.detach() * len(idx)
            err_sum += (logits.argmax(1) != labels).sum()
            if (i + 1) % DIVERGENCE_CHECK_EVERY == 0 and self._blown_up(loss_sum / (i + 1) / len(idx)):
                return None
        self.step += len(batches)
        n = sum(len(idx) for idx in batches)
        if self._blown_up(loss_sum / n) or not self._weights_finite():
            return None
        return {"train_loss": float(loss_sum) / n, "train_error": float(err_sum) / n,
                "steps_per_epoch": len(batches), "train_images": n}

    @staticmethod
    def _blown_up(mean_loss: torch.Tensor) -> bool:
        return not bool(torch.isfinite(mean_loss)) or float(mean_loss) > DIVERGENCE_LOSS

    def _weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    @torch.inference_mode()
    def evaluate(self, split: Split, batch_size: int = 1000) -> dict[str, float]:
        """Mean loss and error on a split, in eval mode (batch norm uses running statistics)."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        err_sum = torch.zeros((), device=self.device)
        for start in range(0, len(split), batch_size):
            images = normalize(split.images[start:start + batch_size])
            labels = split.labels[start:start + batch_size]
            logits = self.model(images)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum")
            err_sum += (logits.argmax(1) != labels).sum()
        return {"test_loss": float(loss_sum) / len(split), "test_error": float(err_sum) / len(split)}

    @property
    def done(self) -> bool:
        """True once every epoch ran or the trial diverged."""
        return self.epoch >= self.cfg.epochs or bool(self.history and self.history[-1]["diverged"])

    def run_epoch(self) -> Row:
        """Train and evaluate one epoch, append its history row and return it; the row has
        diverged=True, and NaN for everything it did not measure, if training blew up."""
        start = time.perf_counter()
        train_stats = self.train_epoch()
        self.epoch += 1
        if train_stats is None:
            row = diverged_row(self.cfg, self.epoch, self.step, self.info)
            self.history.append(row)
            return row
        self._sync()
        train_time = time.perf_counter() - start
        row = {**config_columns(self.cfg), "epoch": self.epoch, "step": self.step,
               **train_stats, **self.evaluate(self.test_set),
               **layer_metrics(self.cfg, self.weights, self.tracker, self.normalized)}
        epoch_time = time.perf_counter() - start
        self.elapsed += epoch_time
        row.update(epoch_time_s=epoch_time, time_s=self.elapsed,
                   images_per_s=train_stats["train_images"] / train_time, diverged=False,
                   **self.info)
        self.history.append(row)
        return row

    def summary(self) -> Row:
        """The trial's summary row (schema.final_row: last finite metrics if it diverged)."""
        return final_row(self.history)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def train(cfg: TrialConfig, report: Callable[[Row], None] = lambda row: None, *,
          resume: dict[str, Any] | None = None,
          save_state: Callable[[dict[str, Any]], None] | None = None) -> Row:
    """Run cfg.epochs epochs, calling report(row) after each; return the summary row.

    `resume` is a dict from an earlier `save_state` call: training continues after its epoch.
    Divergence ends the trial at once with diverged=True; it never raises.
    """
    trial = Trial(cfg)
    if resume is not None:
        trial.load(resume)
    while not trial.done:
        row = trial.run_epoch()
        if save_state is not None and not row["diverged"]:
            save_state(trial.state())
        report(row)
    return trial.summary() if trial.history else {}


TABLE_COLUMNS = ("epoch", "train_loss", "train_error", "test_loss", "test_error",
                 "conv2_unit_norm", "conv2_angular_update", "conv2_pred_angular_update",
                 "images_per_s", "diverged")


def format_row(row: Row, header: bool = False) -> str:
    """One line of the CLI's per-epoch table."""
    if header:
        return "  ".join(TABLE_COLUMNS)
    cells = []
    for c in TABLE_COLUMNS:
        v = row.get(c, float("nan"))
        cells.append(f"{v:>{len(c)}.4g}" if isinstance(v, float) else f"{v!s:>{len(c)}}")
    return "  ".join(cells)


def parse_args(argv: list[str] | None = None) -> TrialConfig:
    """Command-line flags, one per TrialConfig field."""
    parser = argparse.ArgumentParser(prog="python -m l2bn.train", description=__doc__)
    for f in fields(TrialConfig):
        flag = "--" + f.name.replace("_", "-")
        base, _ = field_types()[f.name]
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            parser.add_argument(flag, type=base, default=f.default, help=f"default: {f.default}")
    args = vars(parser.parse_args(argv))
    try:
        return TrialConfig.from_dict(args)
    except ConfigError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    """Run one trial and print a per-epoch table."""
    cfg = parse_args(argv)
    print(f"# trial {cfg.trial_id}: {cfg}", flush=True)
    try:
        trial_header = format_row({}, header=True)
        print(trial_header, flush=True)
        final = train(cfg, lambda row: print(format_row(row), flush=True))
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"# final test_error={final.get('test_error', float('nan')):.4f} "
          f"diverged={final.get('diverged')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

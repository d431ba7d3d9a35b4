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

from .config import FUSED_FIELDS, LAYOUTS, ConfigError, TrialConfig, field_types, group_key
from .data import DataError, Split, augment, epoch_batches, load_cifar10, normalize
from .metrics import UpdateTracker, layer_metrics
from .model import ConvNet, project_
from .optim import StackedOptimizer
from .provenance import run_info
from .schema import Row, config_columns, diverged_row, final_row, layer_column
from .stack import ModelStack

DIVERGENCE_CHECK_EVERY = 50  # steps between host reads of the running loss
# A mean training loss 100x that of chance (ln 10) means the run has blown up even when
# float32 still holds the numbers; such a trial counts as diverged like a NaN one.
DIVERGENCE_LOSS = 100 * math.log(10)
EVAL_IMAGES_X_MODELS = 16_000  # evaluation batch x models in the stack: bounds its memory
# On a CPU big evaluation batches fall out of the cache: measured at width 8 with K = 9, the
# 10,000 test images took 3-4x longer in batches of 1,777 than of 50. A fixed size, not one
# that depends on K, so a model's test loss does not depend on the group it trains in.
EVAL_CPU_BATCH = 50
EVAL_GPU_BATCH = 1000  # on a GPU, for a small stack
EVAL_MIN_BATCH = 50  # on a GPU: however many models share the stack, batches stay at least this
# Memory layout of the activations, by TrialConfig.layout.
MEMORY_FORMATS = dict(zip(LAYOUTS, (torch.channels_last, torch.contiguous_format), strict=True))


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config field 'device' is {name!r} but CUDA is not available here")
    return torch.device(name)


def flush_subnormals() -> None:
    """Flush subnormal floats to zero on this CPU thread and the threads it starts later."""
    # Dead channels' weights and Adam moments decay into subnormals (below 1.2e-38), which x86
    # CPUs compute on through slow microcode assists: adam + batch norm epochs went from 60 s
    # to 470 s as channels died (benchmarks/subnormal.py). FTZ/DAZ changes only those values.
    # The setting is per thread: intra-op threads already running keep gradual underflow, so
    # it must come before a process's first multi-threaded op (Trial.__init__ calls it first).
    torch.set_flush_denormal(True)


class Trial:
    """One group of K grid points (configs equal but for lr and l2, see config.group_key)
    trained as one stack of K models on the same minibatches: each model has its own
    parameters, batch-norm statistics, lr and l2; K = 1 is a single trial. A model that
    diverges is frozen out of the stack; the others go on. `state()`/`load()` checkpoint
    the whole group."""

    def __init__(self, cfgs: TrialConfig | list[TrialConfig]):
        self.cfgs = [cfgs] if isinstance(cfgs, TrialConfig) else list(cfgs)
        check_group(self.cfgs)
        cfg = self.cfg = self.cfgs[0]  # the fields every member shares
        self.device = resolve_device(cfg.device)
        self.autocast = cfg.precision == "bf16"
        self.layout = cfg.layout
        # On a GPU the step loop never waits for the host: divergence flags stay on the device
        # and are read once at the epoch's end (a blown-up model is frozen then, not mid-epoch).
        self.check_on_host = self.device.type != "cuda"
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        else:
            flush_subnormals()
        torch.manual_seed(cfg.seed)
        self.train_set, self.test_set = load_cifar10(
            cfg.data, cfg.data_dir, self.device, cfg.n_train, cfg.n_test)
        # every member starts from this one model
        template = ConvNet(cfg.norm, cfg.width, scale_invariant=cfg.scale_invariant).to(self.device)
        if cfg.update == "projection":
            project_(template)  # start on the unit sphere, as every later step will be
        self.stack = ModelStack(template, len(self.cfgs))
        self.optimizer = StackedOptimizer(  # records Adam's normalized step of each layer
            self.cfgs, self.stack.decayed(cfg.l2_scope), self.device,
            watch={name: layer for layer, name in self.stack.weight_names.items()})
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.tracker = UpdateTracker(self.stack.weights(), self.stack.whole_layer, stacked=True)
        self.active = list(range(len(self.cfgs)))  # member index of each model in the stack
        self.epoch, self.step, self.elapsed = 0, 0, 0.0
        self.histories: list[list[Row]] = [[] for _ in self.cfgs]
        self.info = run_info(self.device)

    @property
    def history(self) -> list[Row]:
        """The first member's rows (the trial's rows when K = 1)."""
        return self.histories[0]

    def state(self) -> dict[str, Any]:
        """Everything needed to continue after `self.epoch` exactly as if never stopped."""
        # Deep copies: training keeps mutating the live tensors.
        return copy.deepcopy({
            "trial_ids": [c.trial_id for c in self.cfgs], "active": self.active,
            "params": {n: p.detach() for n, p in self.stack.params.items()},
            "buffers": self.stack.buffers, "optimizer": self.optimizer.state_dict(),
            "gen": self.gen.get_state(), "epoch": self.epoch, "step": self.step,
            "elapsed": self.elapsed, "histories": self.histories})

    def load(self, state: dict[str, Any]) -> None:
        """Restore from `state()` of a Trial over the same configs."""
        if state["trial_ids"] != [c.trial_id for c in self.cfgs]:
            raise ValueError("checkpoint is of another group of trials")
        self.active = list(state["active"])
        self.stack.params = {n: p.to(self.device).requires_grad_() for n, p in state["params"].items()}
        self.stack.buffers = {n: b.to(self.device) for n, b in state["buffers"].items()}
        self.optimizer.load_state_dict(state["optimizer"])
        self.tracker.select(torch.arange(len(self.active)), self.stack.weights())
        self.gen.set_state(state["gen"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.elapsed, self.histories = state["elapsed"], [list(h) for h in state["histories"]]

    def drop(self, trial_ids: set[str]) -> None:
        """Stop training these members without writing rows (e.g. already finished elsewhere)."""
        keep = [pos for pos, m in enumerate(self.active) if self.cfgs[m].trial_id not in trial_ids]
        self._keep(keep)

    def _keep(self, positions: list[int]) -> None:
        """Shrink the stack to the models at these positions (all per-model state with it)."""
        if len(positions) == len(self.active):
            return
        keep = torch.tensor(positions, dtype=torch.long, device=self.device)
        self.stack.select(keep)
        self.optimizer.select(keep)
        self.tracker.select(keep, self.stack.weights())
        self.active = [self.active[pos] for pos in positions]

    def _freeze(self, blown: list[bool], step: int, rows: list[Row]) -> None:
        """Record the models flagged in `blown` as diverged in epoch self.epoch + 1 and drop
        them from the stack; the other models are untouched."""
        for pos, member in enumerate(self.active):
            if blown[pos]:
                row = diverged_row(self.cfgs[member], self.epoch + 1, step, self.info)
                self.histories[member].append(row)
                rows.append(row)
        self._keep([pos for pos, b in enumerate(blown) if not b])

    def train_epoch(self, rows: list[Row] | None = None) -> dict[str, Any] | None:
        """One pass over the training set for every model in the stack; per-model loss and
        error sums stay on the device. Models whose loss or weights become non-finite (or whose
        loss blows up) are frozen, their diverged rows appended to `rows`; None if none is left."""
        rows = [] if rows is None else rows
        cfg, stack = self.cfg, self.stack
        self.tracker.reset()
        loss_sum = torch.zeros(len(stack), device=self.device)
        err_sum = torch.zeros(len(stack), device=self.device)
        flagged = torch.zeros(len(stack), dtype=torch.bool, device=self.device)
        batches = epoch_batches(len(self.train_set), cfg.batch_size, self.gen, self.device)
        for i, idx in enumerate(batches):
            images = self.train_set.images[idx]
            if cfg.augment:
                images = augment(images, self.gen)
            labels = self.train_set.labels[idx]
            logits = self._forward(images, training=True)  # (K, N, 10)
            losses = per_model_loss(logits, labels)
            stack.zero_grad()
            losses.sum().backward()  # model k's gradient is that of its own loss
            self.tracker.snapshot()
            self.optimizer.step(stack.params)
            after_step(stack, cfg)
            self.tracker.update(self.optimizer.step_sq)
            loss_sum += losses.detach() * len(idx)
            err_sum += (logits.detach().argmax(2) != labels).sum(1)
            if (i + 1) % DIVERGENCE_CHECK_EVERY == 0:
                blown_now = self._blown_up(loss_sum / (i + 1) / len(idx))
                if not self.check_on_host:
                    flagged |= blown_now
                    continue
                blown = blown_now.tolist()  # one host read
                if any(blown):
                    keep = torch.tensor([not b for b in blown], device=self.device)
                    loss_sum, err_sum, flagged = loss_sum[keep], err_sum[keep], flagged[keep]
                    self._freeze(blown, self.step, rows)
                    if not self.active:
                        return None
        self.step += len(batches)
        n = sum(len(idx) for idx in batches)
        blown = (flagged | self._blown_up(loss_sum / n) | ~stack.finite()).tolist()  # one host read
        keep = torch.tensor([not b for b in blown], device=self.device)
        self._freeze(blown, self.step, rows)
        if not self.active:
            return None
        return {"loss_sum": loss_sum[keep], "err_sum": err_sum[keep],
                "steps_per_epoch": len(batches), "train_images": n}

    def _forward(self, images: torch.Tensor, training: bool) -> torch.Tensor:
        x = normalize(images)
        x = x.to(self.stack.dtype).contiguous(memory_format=MEMORY_FORMATS[self.layout])
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            logits = self.stack.forward(x, training)
        return logits.float() if self.autocast else logits

    @staticmethod
    def _blown_up(mean_loss: torch.Tensor) -> torch.Tensor:
        """(K,) bool: the model's mean loss is non-finite or above DIVERGENCE_LOSS."""
        return ~torch.isfinite(mean_loss) | (mean_loss > DIVERGENCE_LOSS)

    @torch.inference_mode()
    def evaluate(self, split: Split) -> dict[str, torch.Tensor]:
        """Per-model mean loss and error on a split (K,), on the device; batch norm uses its
        running statistics. Batches of eval_batch() images."""
        batch_size = self.eval_batch()
        loss_sum = torch.zeros(len(self.stack), device=self.device)
        err_sum = torch.zeros(len(self.stack), device=self.device)
        for start in range(0, len(split), batch_size):
            labels = split.labels[start:start + batch_size]
            logits = self._forward(split.images[start:start + batch_size], training=False)
            loss_sum += per_model_loss(logits, labels, reduction="sum")
            err_sum += (logits.argmax(2) != labels).sum(1)
        return {"test_loss": loss_sum / len(split), "test_error": err_sum / len(split)}

    def eval_batch(self) -> int:
        """Images per evaluation batch: EVAL_CPU_BATCH on a CPU; on a GPU EVAL_GPU_BATCH, less
        for a large stack (EVAL_IMAGES_X_MODELS bounds the memory), never below EVAL_MIN_BATCH."""
        if self.device.type != "cuda":
            return EVAL_CPU_BATCH
        return max(EVAL_MIN_BATCH, min(EVAL_GPU_BATCH, EVAL_IMAGES_X_MODELS // len(self.stack)))

    def _test_metrics(self) -> dict[str, torch.Tensor]:
        """evaluate(test set), or NaN in the epochs before the last cfg.eval_last ones (the test
        set costs about as much as a training epoch on a CPU; rules "3" average the last ones)."""
        last = self.cfg.eval_last
        if last is None or self.epoch > self.cfg.epochs - last:
            return self.evaluate(self.test_set)
        nan = torch.full((len(self.stack),), float("nan"), device=self.device)
        return {"test_loss": nan, "test_error": nan}

    @property
    def done(self) -> bool:
        """True once every epoch ran or every model diverged."""
        return self.epoch >= self.cfg.epochs or not self.active

    def run_epoch(self) -> list[Row]:
        """Train and evaluate one epoch; append each member's row to its history and return
        the rows written (one per model in the stack at the epoch's start): diverged=True, and
        NaN for everything it did not measure, for a model that blew up."""
        start = time.perf_counter()
        rows: list[Row] = []
        stats = self.train_epoch(rows)
        self.epoch += 1
        if stats is None:
            return rows
        self.sync()
        train_time = time.perf_counter() - start
        n = stats["train_images"]
        # Everything measured, per model, moved to the host in one go.
        host = _to_host({"train_loss": stats["loss_sum"] / n, "train_error": stats["err_sum"] / n,
                         **self._test_metrics(), "means": self.tracker.stacked_means(),
                         "weights": {k: w.detach() for k, w in self.stack.weights().items()}})
        epoch_time = time.perf_counter() - start
        self.elapsed += epoch_time
        for pos, member in enumerate(self.active):
            cfg = self.cfgs[member]
            means = {name: {k: v[pos].item() if v[pos].dim() == 0 else v[pos].numpy()
                             for k, v in m.items()} for name, m in host["means"].items()}
            weights = {name: w[pos] for name, w in host["weights"].items()}
            row = {**config_columns(cfg), "epoch": self.epoch, "step": self.step,
                   **{k: float(host[k][pos]) for k in ("train_loss", "train_error")},
                   "steps_per_epoch": stats["steps_per_epoch"], "train_images": n,
                   **{k: float(host[k][pos]) for k in ("test_loss", "test_error")},
                   **layer_metrics(cfg, weights, self.tracker, self.stack.normalized, means),
                   "epoch_time_s": epoch_time, "time_s": self.elapsed,
                   "images_per_s": n / train_time, "diverged": False, **self.info}
            self.histories[member].append(row)
            rows.append(row)
        return rows

    def summaries(self) -> list[Row]:
        """Each member's summary row (schema.final_row); {} for one that ran no epoch."""
        return [final_row(h) if h else {} for h in self.histories]

    def summary(self) -> Row:
        """The first member's summary row (the trial's when K = 1)."""
        return self.summaries()[0]

    def sync(self) -> None:
        """Wait for the device's queued work (CUDA), so a timer reads work done; no-op on CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def after_step(stack: ModelStack, cfg: TrialConfig) -> None:
    """What follows every optimizer step: the projection for update='projection'."""
    if cfg.update == "projection":
        stack.project_()


def check_group(cfgs: list[TrialConfig]) -> None:
    """A group is non-empty, has distinct members, and they differ only in lr and l2."""
    if not cfgs:
        raise ValueError("a group needs at least one config")
    keys = {group_key(c) for c in cfgs}
    if len(keys) > 1:
        raise ValueError(f"configs of one group may differ only in {FUSED_FIELDS}")
    if len({c.trial_id for c in cfgs}) < len(cfgs):
        raise ValueError("a group holds the same config twice")


def per_model_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """(K,) cross-entropy of each model's logits (K, N, C) against the shared labels (N,)."""
    k, n, c = logits.shape
    losses = F.cross_entropy(logits.reshape(k * n, c), labels.repeat(k), reduction="none").view(k, n)
    return losses.mean(1) if reduction == "mean" else losses.sum(1)


def _to_host(tree: Any) -> Any:
    """Dicts of device tensors -> the same on the CPU."""
    if isinstance(tree, dict):
        return {k: _to_host(v) for k, v in tree.items()}
    return tree.cpu() if isinstance(tree, torch.Tensor) else tree


def train(cfg: TrialConfig, report: Callable[[Row], None] = lambda row: None, *,
          resume: dict[str, Any] | None = None,
          save_state: Callable[[dict[str, Any]], None] | None = None) -> Row:
    """Run cfg.epochs epochs (l2bn.run.GroupRun), calling report(row) after each; return the
    summary row.

    `resume` is a dict from an earlier `save_state` call: training continues after its epoch.
    Divergence ends the trial at once with diverged=True; it never raises.
    """
    from .run import GroupRun  # run builds on Trial

    trial = Trial(cfg)
    if resume is not None:
        trial.load(resume)

    def on_epoch(epoch: Any) -> None:
        if save_state is not None and epoch.models:
            save_state(epoch.state())
        report(epoch.rows[0])

    return GroupRun(trial).run(on_epoch)[0]


TABLE_COLUMNS = ("epoch", "train_loss", "train_error", "test_loss", "test_error",
                 *(layer_column("conv2", m) for m in ("unit_norm", "angular_update",
                                                      "pred_angular_update")),
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

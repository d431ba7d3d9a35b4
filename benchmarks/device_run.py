"""The GPU numbers (docs/performance.md), in one call of at most --budget-s seconds (default 450),
on a machine with torch, numpy, pillow, pyarrow, pandas and pyyaml but without Ray:

1. CIFAR-10 read from --data-dir or built from a JPEG archive (benchmarks/cifar_jpeg.py);
2. fused throughput on real data (benchmarks/fused_throughput.measure): one group of K models
   for K = 1, 8, 16, 32, 49 in fp32 and bf16, eager, the K = 1 baseline in the same run;
3. a paper-regime slice: the `paper` grid's sgd + batch norm + l2 cell, seed 0, its 7 lr x 7 l2
   as one fused group on all 50,000 images, for as many epochs as fit in --train-s, through
   l2bn.run.GroupRun and ResultStore exactly as a sweep's trainable writes them;
4. with the time left: the stacked forward under torch.compile against eager (K = 49), then
   K beyond 49 while the rate still grows.

Writes 5 files under --out: rates.json (device, versions, settings, every rate),
log.txt, grid.yaml (the slice as a grid file), trials/<name>.parquet and history/<name>.parquet
(analysis.compact's layout, so `python -m analysis.report --results OUT` reads them).
rates.json is rewritten after every measurement, the Parquet files right after the slice:
a run cut short still leaves what it measured.

    python benchmarks/device_run.py --data-dir DIR --device cuda --out results/gpu
    python benchmarks/device_run.py --tiny --out DIR     # the same steps in seconds on a CPU
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/device_run.py` from an uninstalled checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402
from cifar_jpeg import build  # noqa: E402
from fused_throughput import PAPER_IMAGES, measure  # noqa: E402

from analysis.compact import compact  # noqa: E402
from l2bn.config import DATA_SIZES, FUSED_FIELDS, ConfigError, TrialConfig  # noqa: E402
from l2bn.data import DataError, batch_folder  # noqa: E402
from l2bn.grid import groups, load_grid  # noqa: E402
from l2bn.provenance import run_info  # noqa: E402
from l2bn.run import Epoch, GroupRun  # noqa: E402
from l2bn.store import ResultStore  # noqa: E402
from l2bn.train import Trial, resolve_device  # noqa: E402

PAPER_GROUPS = 5292 // 49  # the paper grid's lr x l2 groups (sweeps/grids/paper.yaml)
SLICE = {"optimizer": "sgd", "norm": "batch", "update": "l2", "seed": 0}  # one paper cell
REQUIRED_KS, GROW_KS = (1, 8, 16, 32, 49), (64, 96, 128, 192, 256, 384, 512)
GROWS = 1.03  # a larger K counts as faster when its rate is at least this much higher
RESERVE_S = 15.0  # kept back at the end: compaction, the last JSON
UNKNOWN_S = 10.0  # a guess for a measurement with no smaller K measured yet
TINY = dict(device="cpu", ks=[1, 2], grow=[3], compile_ks=[2], compile_backend="eager",
            width=4, batch_size=32, steps=2, repeats=2, epochs=1, budget_s=300.0, train_s=60.0,
            slice_overrides={"data": "synthetic", "width": 4, "batch_size": 32, "n_train": 128,
                             "n_test": 64})


class Run:
    """The run's clock, log and rates.json, written as it goes."""

    def __init__(self, out: Path, budget_s: float):
        self.out, self.start, self.budget_s = out, time.perf_counter(), budget_s
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = open(out / "log.txt", "a")  # noqa: SIM115 - open for the whole run
        self.report: dict[str, Any] = {"rates": [], "skipped": [], "timing_s": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def log(self, msg: str) -> None:
        line = f"[{self.elapsed():6.1f} s] {msg}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def rates(self, precision: str, mode: str = "eager", max_k: float = float("inf")) -> list[dict]:
        """The measured rows (with a rate) of one precision and mode, K <= max_k."""
        return [r for r in self.report["rates"] if r["precision"] == precision
                and r["mode"] == mode and "images_per_s" in r and r["k"] <= max_k]

    def save(self) -> None:
        self.report["timing_s"]["total"] = round(self.elapsed(), 1)
        tmp = self.out / ".rates.json.tmp"
        tmp.write_text(json.dumps(self.report, indent=1, default=str))
        tmp.replace(self.out / "rates.json")


def device_facts(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on, and the numeric modes in force."""
    facts: dict[str, Any] = {"type": device.type, "cpu": platform.processor() or platform.machine(),
                             "threads": torch.get_num_threads()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        facts.update(name=p.name, capability=f"{p.major}.{p.minor}",
                     memory_gib=round(p.total_memory / 2**30, 1),
                     multiprocessors=p.multi_processor_count, cuda=torch.version.cuda,
                     cudnn=torch.backends.cudnn.version(),
                     cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,  # fp32 convs may use TF32
                     matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return facts


def bench_group(base: TrialConfig, k: int) -> list[TrialConfig]:
    """K members of one group with safe hyper-parameters (none may diverge while timed)."""
    return [base.replace(lr=0.01 + 0.09 * i / max(k - 1, 1), l2=5e-4 * i / max(k - 1, 1))
            for i in range(k)]


def time_one(run: Run, args: argparse.Namespace, base: TrialConfig, k: int, precision: str,
             compiled: bool) -> dict[str, Any]:
    """One measurement as a rates.json row (an `error` instead of a rate if it failed)."""
    row: dict[str, Any] = {"k": k, "precision": precision, "mode": "compiled" if compiled else "eager"}
    try:
        m = measure(bench_group(base.replace(precision=precision), k), args.steps, args.repeats,
                    args.compile_backend if compiled else None)
        rate = round(m.images_per_s, 1)  # every number in the row from this one
        row.update(images_per_s=rate, warmup_s=round(m.warmup_s, 2),
                   times_s=[round(t, 9) for t in m.times_s], images=m.images,
                   paper_grid_h=round(PAPER_IMAGES / rate / 3600, 1))
    except Exception as exc:  # OOM, a compile failure: recorded, the run goes on
        row["error"] = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    if "error" in row and torch.cuda.is_available():
        torch.cuda.empty_cache()  # after the except block: its traceback held the failed group
    run.report["rates"].append(row)
    if "images_per_s" in row:  # against the same precision's eager K = 1 and eager same K
        for key, ref_k in (("ratio_to_k1", 1), ("ratio_to_eager", k)):
            ref = [r for r in run.rates(precision, max_k=ref_k) if r["k"] == ref_k]
            if ref and (key == "ratio_to_k1" or compiled):
                row[key] = round(row["images_per_s"] / ref[0]["images_per_s"], 3)
    run.save()
    shown = f"{row['images_per_s']:,.0f} img/s" if "images_per_s" in row else row["error"]
    run.log(f"K={k:<4} {precision} {row['mode']:<8} {shown}"
            + (f" ({row['ratio_to_k1']:.2f}x K=1)" if "ratio_to_k1" in row else ""))
    return row


def estimate_s(run: Run, args: argparse.Namespace, k: int, precision: str, compiled: bool) -> float:
    """Seconds a measurement should take, from the closest smaller K measured (eager); a
    precision's first measurement is guessed at UNKNOWN_S."""
    known = run.rates(precision, max_k=k)
    if known:
        rate = max(known, key=lambda r: r["k"])["images_per_s"]
        seconds = (1 + args.repeats) * args.steps * args.batch_size * k / rate + 2.0
    else:
        seconds = UNKNOWN_S
    if compiled:
        done = [r["warmup_s"] for r in run.report["rates"] if r["mode"] == "compiled" and "warmup_s" in r]
        seconds += max(done) if done else 60.0
    return seconds


def bench(run: Run, args: argparse.Namespace, base: TrialConfig, ks: list[int], compiled: bool,
          grow: bool = False) -> None:
    """Time each K in fp32 and bf16 while the budget allows (keeping `args.train_s` free until
    the slice has run); with `grow`, a precision stops at the first K that is not faster."""
    for precision in args.precisions:
        best = max((r["images_per_s"] for r in run.rates(precision)), default=0.0)
        for k in ks:
            reserve = RESERVE_S + (args.train_s if "train" not in run.report else 0.0)
            need = estimate_s(run, args, k, precision, compiled)
            if need > run.left() - reserve:
                run.report["skipped"].append({"k": k, "precision": precision, "compiled": compiled,
                                              "why": f"time budget: needs ~{need:.0f} s"})
                run.log(f"K={k} {precision} {'compiled' if compiled else 'eager'}: skipped, ~{need:.0f} s "
                        f"needed, {run.left() - reserve:.0f} s left")
                break
            row = time_one(run, args, base, k, precision, compiled)
            if grow and row.get("images_per_s", 0.0) < GROWS * best:
                break
            best = max(best, row.get("images_per_s", 0.0))


def slice_configs(args: argparse.Namespace, epochs: int, data_dir: str | None) -> list[TrialConfig]:
    """The paper grid's SLICE cell: its 7 lr x 7 l2 as one group, `epochs` epochs."""
    overrides = {**SLICE, "epochs": epochs, "device": args.device, **args.slice_overrides}
    if data_dir:
        overrides["data_dir"] = data_dir
    (group,) = groups(load_grid("paper", overrides).configs(), None)
    return group


def plan_epochs(run: Run, cfgs: list[TrialConfig], budget_s: float) -> int:
    """As many epochs as fit in `budget_s`, from the measured fp32 eager rate at the largest K
    <= the group's (training + a test pass at about a third of the cost, +20%)."""
    k = len(cfgs)
    known = run.rates(cfgs[0].precision, max_k=k)
    if not known:
        return 1
    rate = max(known, key=lambda r: r["k"])["images_per_s"]
    cfg = cfgs[0]
    train, test = (n or size for n, size in zip((cfg.n_train, cfg.n_test), DATA_SIZES[cfg.data], strict=True))
    epoch_s = 1.2 * k * (train + test / 3) / rate
    return max(1, int(budget_s // epoch_s))


def train_slice(run: Run, cfgs: list[TrialConfig], store: ResultStore, budget_s: float) -> dict[str, Any]:
    """Train the group as a sweep's trainable does (l2bn.run.GroupRun: each member's history
    file rewritten per epoch, a summary row at the end); stop early only when the next epoch
    would overrun `budget_s`, then the members' rows say `failed` with the reason."""
    start = time.perf_counter()
    group = GroupRun(Trial(cfgs), store)
    trial, epoch_times = group.trial, []

    def cut_after(epoch: int) -> str:
        return f"stopped by the time budget after {epoch} of {cfgs[0].epochs} epochs"

    def log(epoch: Epoch) -> str | None:
        epoch_times.append(epoch.time_s)
        errors = [r["test_error"] for r in epoch.rows if not r["diverged"]]
        run.log(f"slice epoch {epoch.epoch}/{cfgs[0].epochs}: {epoch.time_s:.1f} s, "
                f"{epoch.models} models training, best test error "
                f"{min(errors) if errors else math.nan:.4f}")
        if not trial.done and time.perf_counter() - start + epoch.time_s > budget_s:
            return cut_after(epoch.epoch)
        return None

    group.run(log)
    wall = time.perf_counter() - start
    cut = None if trial.done else cut_after(trial.epoch)
    finals = [f for f in trial.summaries() if f and not f["diverged"]]
    epoch_s = statistics.median(epoch_times)
    # each row's images_per_s is the group's training images/s (per model; the test pass and
    # the metrics' host transfer are not in it): x the models that trained
    rates = [r["images_per_s"] * n for r, n in _rows_and_models(trial)]
    return {"name": store.name, "models": len(cfgs), "epochs": cfgs[0].epochs,
            "epochs_done": trial.epoch, "cut": cut, "epoch_times_s": [round(t, 4) for t in epoch_times],
            "diverged": len(cfgs) - len(finals), "wall_s": round(wall, 1),
            "best_test_error": min((f["test_error"] for f in finals), default=None),
            "train_images_per_s": round(statistics.median(rates), 1) if rates else None,
            # the paper grid as 108 such groups x 100 epochs, at this slice's epoch time
            # (training, the test pass and the metrics; every group costed as sgd + batch norm)
            "paper_grid_h": round(PAPER_GROUPS * 100 * epoch_s / 3600, 1)}


def _rows_and_models(trial: Trial) -> list[tuple[dict[str, Any], int]]:
    """(one trained row, models that trained in that epoch) per epoch."""
    out = []
    for epoch in range(1, trial.epoch + 1):
        rows = [r for h in trial.histories for r in h if r["epoch"] == epoch and not r["diverged"]]
        if rows:
            out.append((rows[0], len(rows)))
    return out


def write_slice_grid(cfgs: list[TrialConfig], path: Path, name: str) -> None:
    """The slice as a grid file (l2bn/grid.py's format) that gives exactly these configs."""
    fixed = {k: v for k, v in cfgs[0].to_row().items()
             if k not in FUSED_FIELDS and k not in ("device", "data_dir")}
    grid = {"name": name, "description": "benchmarks/device_run.py: the paper grid's "
            f"{SLICE} cell as one fused group of {len(cfgs)}, {cfgs[0].epochs} epochs "
            "(as many as the device run's time budget allowed)",
            "fixed": fixed, "axes": {k: sorted({getattr(c, k) for c in cfgs}) for k in FUSED_FIELDS}}
    path.write_text(yaml.safe_dump(grid, sort_keys=False))


def summary_table(report: dict[str, Any]) -> str:
    """The README's table: K, precision, mode, img/s, ratio to K = 1, paper grid hours."""
    lines = [f"{'K':>4} {'precision':>9} {'mode':>8} {'img/s':>10} {'x K=1':>6} {'x eager':>7} "
             f"{'paper h':>8}"]
    for r in report["rates"]:
        if "images_per_s" not in r:
            lines.append(f"{r['k']:>4} {r['precision']:>9} {r['mode']:>8} error: {r['error'][:60]}")
            continue
        lines.append(f"{r['k']:>4} {r['precision']:>9} {r['mode']:>8} {r['images_per_s']:>10,.0f} "
                     f"{r.get('ratio_to_k1', math.nan):>6.2f} {r.get('ratio_to_eager', math.nan):>7.2f} "
                     f"{r['paper_grid_h']:>8,.0f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/device_run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--archive", help="the CIFAR-10 JPEG archive (cifar10-jpeg.tar.gz), built here")
    src.add_argument("--data-dir", help="an existing copy holding cifar-10-batches-py")
    src.add_argument("--tiny", action="store_true",
                     help="synthetic data, width 4, K = 1-4, one epoch, CPU: the tests' mode")
    p.add_argument("--out", required=True, type=Path, help="where the 5 files go, e.g. results/gpu")
    p.add_argument("--work", type=Path, help="where CIFAR-10 is built (default: a temporary folder)")
    p.add_argument("--name", default="paper_slice", help="the slice's sweep name (file stem)")
    p.add_argument("--device", default="auto")
    p.add_argument("--budget-s", type=float, default=450.0, help="the whole run, seconds")
    p.add_argument("--train-s", type=float, default=240.0, help="the slice's share, seconds")
    p.add_argument("--epochs", type=int, help="the slice's epochs (default: as many as fit)")
    p.add_argument("--ks", type=int, nargs="+", default=list(REQUIRED_KS))
    p.add_argument("--grow", type=int, nargs="*", default=list(GROW_KS),
                   help="larger K, tried while the rate still grows by 3%%")
    p.add_argument("--compile-ks", type=int, nargs="*", default=[49])
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=30, help="steps per timed epoch")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs (median) after a warm-up")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args(argv)
    args.slice_overrides = {}
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args.out, args.budget_s)
    try:
        return _main(run, args)
    except (ConfigError, DataError) as exc:  # no CUDA, a bad --data-dir: one line, at once
        run.log(f"error: {exc}")
        run.save()
        return 2
    except BaseException:
        run.log(traceback.format_exc())
        run.save()
        raise


def _main(run: Run, args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    run.report.update(device=device_facts(device), versions=run_info(device), settings={
        k: v for k, v in vars(args).items() if k not in ("out", "work")})
    run.log(f"device {run.report['device']}")
    data_dir = args.data_dir
    if args.archive:
        work = args.work or Path(tempfile.mkdtemp(prefix="l2bn-device-"))
        data_dir = str(build(args.archive, work))
        run.report["timing_s"]["data"] = round(run.elapsed(), 1)
        run.log(f"CIFAR-10 built from {args.archive} in {work}")
    if data_dir:
        batch_folder(data_dir)  # DataError now, not in every measurement
    base = TrialConfig(optimizer="sgd", norm="batch", width=args.width, batch_size=args.batch_size,
                       n_test=args.batch_size, device=args.device,
                       data="synthetic" if args.tiny else "cifar10", data_dir=data_dir)
    run.report["settings"]["bench_config"] = base.to_row()
    measure(bench_group(base, 1), 2)  # the process's warm-up (CUDA context, handles), not kept
    run.log("warmed up")
    bench(run, args, base, args.ks, compiled=False)
    run.report["timing_s"]["bench"] = round(run.elapsed(), 1)

    train_s = min(args.train_s, run.left() - RESERVE_S)
    cfgs = slice_configs(args, 1, data_dir)
    epochs = args.epochs or plan_epochs(run, cfgs, train_s)
    cfgs = slice_configs(args, epochs, data_dir)
    run.log(f"slice: {len(cfgs)} models, {epochs} epochs planned in {train_s:.0f} s")
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(tmp, args.name)
        run.report["train"] = train_slice(run, cfgs, store, train_s)
        compact(store.uri(), args.out, args.name)
    write_slice_grid(cfgs, args.out / "grid.yaml", args.name)
    run.report["timing_s"]["train"] = round(run.elapsed(), 1)
    run.save()

    bench(run, args, base, args.compile_ks, compiled=True)
    bench(run, args, base, [k for k in args.grow if k > max(args.ks)], compiled=False, grow=True)
    run.save()
    run.log("\n" + summary_table(run.report) + f"\nslice: {json.dumps(run.report['train'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

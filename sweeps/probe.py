"""How many models per stack (K) and threads per trial train fastest on this CPU machine.

A short timed probe of a grid's own shape (width, batch, norm, optimizer, augmentation) on
synthetic images of CIFAR-10's size, run before a sweep starts: for each K and thread count
t, `cpus // t` processes train side by side (as that many Tune trials would), each timing a
stack of K models for WINDOW_S seconds after a warm-up, in lockstep. The machine's rate for
(K, t) is the sum of its processes' model-images per second. About 0.3 s per (K, t) pair plus
about 1 s to start the processes (they import torch) on an idle 2-CPU machine: 3.5 s for 8
pairs; longer on a loaded one. `choose` picks from the rates; it is pure, so tests inject the
timings. No Ray here (the sweep driver runs it before Ray starts).

The rates are cached per machine, software and shape (`cache_key`) in
$L2BN_CACHE/probe.json (default ~/.cache/l2bn): a later sweep of the same shape on the same
machine reuses them instead of probing again (--reprobe measures anew).
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import multiprocessing as mp
import os
import platform
import queue
import socket
import time
from pathlib import Path
from typing import Any

from l2bn import __version__
from l2bn.config import TrialConfig

PROBE_KS = (1, 4, 8, 16)
WARMUP_STEPS, STEPS_PER_CALL, WINDOW_S = 2, 2, 0.2  # per (K, threads): steps, steps, seconds
TIMEOUT_S = 300  # a probe process that has not reported by then is taken as stuck
# The TrialConfig fields a step's cost depends on (lr, l2, seed, epochs, data do not).
SHAPE_FIELDS = ("optimizer", "norm", "update", "l2_scope", "batch_size", "width", "augment",
                "scale_invariant", "precision", "device")
CACHE_FILE = "probe.json"


def candidate_ks(group_size: int, ks: tuple[int, ...] = PROBE_KS) -> list[int]:
    """The K to measure: PROBE_KS capped by the largest group of the grid (1 always)."""
    return sorted({min(k, group_size) for k in ks} | {1})


def candidate_threads(cpus: int, fixed: int | None = None) -> list[int]:
    """1 and all `cpus` (one trial per core, or one trial on every core), or just `fixed`."""
    return [fixed] if fixed else sorted({1, max(1, cpus)})


def slot_use(sizes: list[int], slots: int) -> float:
    """Share of `slots` side-by-side trial slots kept busy by Tune trials of these numbers of
    models (time proportional to size), taken longest first by the free slot (Tune's FIFO of
    equal trials): trials of 3, 3, 3 on 2 slots finish at 6, the slots worked 9 of 12 (0.75)."""
    ends = [0.0] * slots
    for size in sorted(sizes, reverse=True):
        ends[ends.index(min(ends))] += size
    return sum(sizes) / (slots * max(ends))


def choose(rates: dict[tuple[int, int], float], sizes: dict[int, list[int]], cpus: int) -> tuple[int, int]:
    """(K, threads) with the most model-images/s for the whole sweep: the machine's measured
    rate for that pair times the share of its `cpus // threads` slots that the grid's Tune
    trials (`sizes[K]`: their numbers of models) keep busy. Ties go to the smaller K, then
    fewer threads."""
    def score(kt: tuple[int, int]) -> tuple[float, int, int]:
        k, t = kt
        return rates[kt] * slot_use(sizes[k], max(1, cpus // t)), -k, -t

    return max(rates, key=score)


def _probe_configs(cfg: TrialConfig, k: int) -> list[TrialConfig]:
    """K distinct configs of cfg's shape on synthetic images, at learning rates far too small
    to diverge (a model frozen mid-probe would shrink the stack)."""
    base = cfg.replace(data="synthetic", data_dir=None, device="cpu", n_test=50,
                       n_train=cfg.batch_size * STEPS_PER_CALL)
    return [base.replace(lr=1e-6 * (i + 1), l2=0.0) for i in range(k)]


def _worker(rank: int, row: dict[str, Any], ks: list[int], threads: list[int], cpus: int,
            window_s: float, barrier: Any, results: Any) -> None:
    """Process `rank` of `cpus` side by side: per K and thread count t, the first `cpus // t`
    processes warm up, all wait for each other, those time window_s seconds of training and
    report (K, t, model-images/s), and all wait again (nobody warms up the next pair while
    another still times this one)."""
    import torch

    from l2bn.train import Trial

    cfg = TrialConfig.from_dict(row)
    for k in ks:
        trial = Trial(_probe_configs(cfg, k))
        for t in threads:
            active = rank < max(1, cpus // t)
            if active:
                torch.set_num_threads(t)
                for _ in range(WARMUP_STEPS // STEPS_PER_CALL):
                    trial.train_epoch()
            barrier.wait()
            if active:
                start = time.perf_counter()
                images = 0
                while (elapsed := time.perf_counter() - start) < window_s:
                    trial.train_epoch()
                    images += cfg.batch_size * STEPS_PER_CALL * k
                results.put((k, t, images / elapsed))
            barrier.wait()
    results.close()
    results.join_thread()  # everything reported: skip torch's teardown at exit (~0.6 s)
    os._exit(0)


def measure(cfg: TrialConfig, ks: list[int], threads: list[int], cpus: int,
            window_s: float = WINDOW_S) -> dict[tuple[int, int], float]:
    """The machine's model-images/s for each (K, t): `cpus // t` processes of t threads each
    training K models of cfg's shape side by side, summed."""
    ctx = mp.get_context("spawn")  # fresh interpreters: fork after torch threads is unsafe
    n = max(1, cpus // min(threads))
    barrier, results = ctx.Barrier(n, timeout=TIMEOUT_S), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(rank, cfg.to_row(), ks, threads, cpus, window_s,
                                               barrier, results), daemon=True) for rank in range(n)]
    for p in procs:
        p.start()
    expected = len(ks) * sum(max(1, cpus // t) for t in threads)
    try:
        got = [results.get(timeout=TIMEOUT_S) for _ in range(expected)]
    except queue.Empty:
        raise RuntimeError(f"probe processes reported nothing for {TIMEOUT_S} s (exit codes "
                           f"{[p.exitcode for p in procs]})") from None
    for p in procs:
        p.join()
    return {(k, t): sum(r for kk, tt, r in got if (kk, tt) == (k, t)) for k in ks for t in threads}


def cache_key(cfg: TrialConfig, ks: list[int], threads: list[int], cpus: int) -> str:
    """What the measured rates depend on: the machine, the software, the probed shape and the
    candidates, as one JSON string."""
    from l2bn.provenance import git_revision

    return json.dumps({
        "host": socket.gethostname(), "machine": platform.machine(), "cpu": _cpu_model(),
        "cpus": cpus, "torch": importlib.metadata.version("torch"), "l2bn": __version__,
        "git_rev": git_revision(), "layout": cfg.layout,
        "shape": {f: getattr(cfg, f) for f in SHAPE_FIELDS}, "ks": ks, "threads": threads,
    }, sort_keys=True)


def _cpu_model() -> str:
    """The CPU's model name (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cache_path() -> Path:
    """$L2BN_CACHE/probe.json (default ~/.cache/l2bn/probe.json), beside downloaded data."""
    from l2bn.data import default_cache_dir

    return default_cache_dir() / CACHE_FILE


def cached(key: str) -> dict[str, Any] | None:
    """The cached probe for `key` ({"rates": {(K, t): rate}, "measured": UTC time,
    "seconds": probe time}), or None; an unreadable cache counts as empty."""
    try:
        entry = json.loads(cache_path().read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    if not entry:
        return None
    return {**entry, "rates": {(k, t): r for k, t, r in entry["rates"]}}


def remember(key: str, rates: dict[tuple[int, int], float], seconds: float) -> str:
    """Add a probe's rates to the cache (atomically: a crash leaves the old file); returns
    the time it records. A cache that cannot be written is skipped: it only saves time."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    path = cache_path()
    try:
        entries = json.loads(path.read_text()) if path.exists() else {}
        entries = entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        entries = {}
    entries[key] = {"rates": [[k, t, r] for (k, t), r in sorted(rates.items())],
                    "measured": now, "seconds": round(seconds, 1)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    return now

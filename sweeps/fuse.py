"""--fuse and --cpus-per-trial as run_grid uses them: a number as given, or `auto`.

`auto` on a GPU (--gpus-per-trial > 0) is whole lr x l2 groups per Tune trial. On CPUs it is
measured: sweeps/probe.py times the grid's own shape for a few K (models per stack) and thread
counts before Tune starts, and the fastest (K, threads) sets --fuse and, unless given,
--cpus-per-trial; the rates and the choice go into sweep.json. A sweep that exists already
keeps the fuse and threads it started with (its Tune trials were made by the first run).
A new sweep of a shape this machine probed before reuses those rates (sweeps/probe.py's cache;
--reprobe measures again) and chooses from them for its own groups.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Any

from l2bn.config import TrialConfig
from l2bn.grid import groups
from l2bn.store import ResultStore

from .errors import SweepError


@dataclass(frozen=True)
class FuseChoice:
    """What a sweep runs with: models per Tune trial (None: whole groups), CPUs per trial,
    and the probe's record (None when nothing was measured)."""

    fuse: int | None
    cpus_per_trial: float
    probe: dict[str, Any] | None = None


def parse_fuse(value: str) -> int | None:
    """--fuse: a positive int, or None for auto."""
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise SweepError(f"--fuse expects a positive integer or 'auto', got {value!r}")
    return int(value)


def available_cpus(num_cpus: int | None) -> int:
    """The CPUs a local Ray instance gets: --num-cpus, else those this process may use."""
    return num_cpus or len(os.sched_getaffinity(0))


def resolve(fuse: int | None, cpus_per_trial: float | None, gpus_per_trial: float,
            configs: list[TrialConfig], store: ResultStore, cpus: int, local: bool,
            reprobe: bool = False) -> FuseChoice:
    """The sweep's fuse and CPUs per trial (see the module docstring); cpus_per_trial None:
    not given. Probes only for auto, on CPUs, on a local instance, for a new sweep."""
    cpus_given = cpus_per_trial
    cpus_per_trial = cpus_per_trial or 1.0
    if fuse is not None or gpus_per_trial > 0:
        return FuseChoice(fuse, cpus_per_trial)
    try:
        meta = store.read_meta()
    except ValueError as exc:
        raise SweepError(f"{exc}: pass a new --name (or delete the sweep's folder)") from None
    if meta and meta.get("options"):
        old = {"fuse": 1, "cpus_per_trial": 1.0, **meta["options"]}  # sweeps from before --fuse
        print(f"--fuse auto: sweep '{store.name}' keeps the --fuse {old['fuse']} and "
              f"--cpus-per-trial {old['cpus_per_trial']:g} it started with", flush=True)
        return FuseChoice(old["fuse"], cpus_given or old["cpus_per_trial"], meta.get("fuse_probe"))
    if not local:
        print("--fuse auto: 1 (on a Ray cluster the driver's CPUs may not be the workers')",
              flush=True)
        return FuseChoice(1, cpus_per_trial)
    if cpus_given:  # the user's CPUs per trial; torch threads as the trainable sets them
        return replace(probe(configs, cpus, max(1, int(cpus_given)), reprobe),
                       cpus_per_trial=cpus_given)
    return probe(configs, cpus, None, reprobe)


def probe(configs: list[TrialConfig], cpus: int, threads: int | None,
          reprobe: bool = False) -> FuseChoice:
    """Time the grid's shape (sweeps/probe.py; or reuse this machine's cached rates for it unless
    `reprobe`), print the rates, and choose (K, threads)."""
    from . import probe as p

    ks = p.candidate_ks(max(len(g) for g in groups(configs, None)))
    ts = p.candidate_threads(cpus, threads)
    if len(ks) * len(ts) == 1:  # nothing to choose between
        return FuseChoice(ks[0], float(ts[0]), {"k": ks[0], "threads": ts[0], "cpus": cpus,
                                                "seconds": 0.0, "rates": []})
    found = _rates(configs[0], ks, ts, cpus, reprobe)
    if found is None:
        return FuseChoice(1, 1.0)
    rates, took, measured, reused = found
    how = (f"reused the probe of {measured} ({len(rates)} (K, threads) pairs; --reprobe measures "
           "again)" if reused else f"probed {len(rates)} (K, threads) pairs in {took:.1f} s")
    sizes = {k: [len(g) for g in groups(configs, k)] for k in ks}
    k, t = p.choose(rates, sizes, cpus)
    rows = [{"k": kk, "threads": tt, "concurrent": max(1, cpus // tt),
             "model_images_per_s": round(r, 1), "tune_trials": len(sizes[kk]),
             "slot_use": round(p.slot_use(sizes[kk], max(1, cpus // tt)), 3)}
            for (kk, tt), r in sorted(rates.items())]
    print(f"--fuse auto: {how} on {cpus} CPUs (model-images/s of the machine):", flush=True)
    for r in rows:
        mark = "  <- chosen" if (r["k"], r["threads"]) == (k, t) else ""
        print(f"  K={r['k']:<3} threads={r['threads']} x {r['concurrent']} trials: "
              f"{r['model_images_per_s']:9.0f}, {r['tune_trials']} Tune trials keep "
              f"{r['slot_use']:.0%} of the slots busy{mark}", flush=True)
    record = {"k": k, "threads": t, "cpus": cpus, "seconds": round(took, 1), "rates": rows,
              "measured": measured, "reused": reused}
    return FuseChoice(k, float(t), record)  # a given threads is ts == [threads]


def _rates(cfg: TrialConfig, ks: list[int], ts: list[int], cpus: int, reprobe: bool
           ) -> tuple[dict[tuple[int, int], float], float, str, bool] | None:
    """(rates, probe seconds, when they were measured, reused?) from this machine's cache for
    cfg's shape (0 s), else measured and cached; None if the probe failed."""
    from . import probe as p

    key = p.cache_key(cfg, ks, ts, cpus)
    hit = None if reprobe else p.cached(key)
    if hit:
        return hit["rates"], 0.0, hit["measured"], True
    start = time.perf_counter()
    try:
        rates = p.measure(cfg, ks, ts, cpus)
    except RuntimeError as exc:
        print(f"--fuse auto: 1 (the probe failed: {exc})", flush=True)
        return None
    took = time.perf_counter() - start
    return rates, took, p.remember(key, rates, took), False

"""Benchmarks report the images they really trained: a rate is never computed from images that
were not there (the 512 synthetic images once made --steps 20 read 5x too fast)."""
from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import torch
from conftest import REPO, load_script

from l2bn.config import ConfigError, TrialConfig

TINY = dict(data="synthetic", device="cpu", width=4, batch_size=32, n_test=32)


def test_fused_rate_counts_the_images_each_model_trained(monkeypatch):
    bench = load_script("fused_throughput")
    ticks = itertools.count()
    monkeypatch.setattr(bench.time, "perf_counter", lambda: float(next(ticks)))  # 1 s per interval
    cfgs = [TrialConfig(**TINY, lr=0.01 * (1 + i)) for i in range(2)]
    m = bench.measure(cfgs, steps=3, repeats=3)
    assert m.images == 3 * 32 and m.times_s == [1.0, 1.0, 1.0] and m.warmup_s == 1.0
    assert m.images_per_s == 2 * 3 * 32  # 2 models x 96 images in 1 s
    assert bench.rate(cfgs[:1], steps=2) == 64


def test_fused_rate_refuses_more_steps_than_the_data_holds():
    bench = load_script("fused_throughput")
    with pytest.raises(ConfigError, match="'n_train' must be at most 512"):
        bench.rate([TrialConfig(**{**TINY, "batch_size": 128})], steps=20)
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fused_throughput.py"),
                          "--device", "cpu", "--steps", "20", "--ks", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "img/s" not in out.stdout
    assert out.stderr.strip().splitlines()[-1].startswith("error: config field 'n_train' must be at most 512")


def test_subnormal_benchmark_builds_the_dead_channel_state_it_claims():
    """benchmarks/subnormal.py times v4c's state: a share of each conv layer's channels with
    subnormal weights that stay subnormal with flush-to-zero off and become 0 with it on."""
    bench = load_script("subnormal")
    try:
        slow = bench.dead_group(k=2, width=4, dead=0.5)
        assert bench.subnormal_share(slow) == pytest.approx(0.5, abs=0.05)
        bench.timed_epoch(slow, flush=False)
        assert bench.subnormal_share(slow) == pytest.approx(0.5, abs=0.05)
        bench.timed_epoch(slow, flush=True)
        assert bench.subnormal_share(slow) == 0.0
    finally:
        torch.set_flush_denormal(False)

"""The device run (benchmarks/device_run.py) in its tiny CPU mode, end to end, so the one call a
GPU machine gets cannot rot; and its vendored CIFAR-10 builder (benchmarks/cifar_jpeg.py)."""
from __future__ import annotations

import io
import pickle
import re
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, load_script
from PIL import Image

ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"  # where .ci/run finds it
FILES = {"rates.json", "log.txt", "grid.yaml", "trials/paper_slice.parquet",
         "history/paper_slice.parquet"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("device") / "OUT"
    # as `python benchmarks/device_run.py --tiny --out OUT` on a machine without Ray
    # (an `import ray` anywhere fails), and without matplotlib/seaborn
    script = REPO / "benchmarks" / "device_run.py"
    run = (f"import runpy, sys; sys.modules.update(ray=None, matplotlib=None, seaborn=None); "
           f"sys.path.insert(0, {str(script.parent)!r}); sys.argv = [{str(script)!r}, '--tiny', "
           f"'--out', {str(out)!r}]; runpy.run_path({str(script)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", run], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return out, proc.stdout


def test_tiny_run_writes_what_the_device_tool_brings_back(tiny_run):
    out, _ = tiny_run
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == FILES  # at most 8 files, at most 2 folders down, plain names
    assert all(re.fullmatch(r"[A-Za-z0-9._/-]+", f) and f.count("/") <= 2 for f in files)


def test_tiny_run_rates_are_the_measured_ones(tiny_run):
    import json

    out, stdout = tiny_run
    fused = load_script("fused_throughput")
    report = json.loads((out / "rates.json").read_text())
    assert {"device", "versions", "settings", "rates", "train", "skipped", "timing_s"} <= set(report)
    assert report["device"]["type"] == "cpu" and report["versions"]["torch_version"]
    assert "cuda_visible_devices" in report["versions"]
    settings = report["settings"]
    assert settings["tiny"] and settings["bench_config"]["width"] == 4
    rates = {(r["k"], r["precision"], r["mode"]): r for r in report["rates"]}
    # every K of the tiny mode, both precisions, eager; compiled at its compile K; no errors
    want = {(k, p, "eager") for k in (1, 2) for p in ("fp32", "bf16")}
    want |= {(2, p, "compiled") for p in ("fp32", "bf16")}
    assert want <= set(rates) and not report["skipped"]
    assert all("error" not in r for r in rates.values())
    for (k, p, mode), r in rates.items():
        assert r["images"] == settings["steps"] * settings["batch_size"]  # what each epoch trained
        assert len(r["times_s"]) == settings["repeats"]
        # each number from its timings, up to the rounding rates.json keeps (0.1, 1e-3)
        median = statistics.median(r["times_s"])  # times kept to the ns
        assert r["images_per_s"] == pytest.approx(k * r["images"] / median, rel=2e-5, abs=0.051)
        assert r["paper_grid_h"] == pytest.approx(fused.PAPER_IMAGES / r["images_per_s"] / 3600,
                                                  abs=0.051)
        k1 = rates[(1, p, "eager")]["images_per_s"]
        assert r["ratio_to_k1"] == pytest.approx(r["images_per_s"] / k1, abs=5.1e-4)
        if mode == "compiled":
            eager = rates[(k, p, "eager")]["images_per_s"]
            assert r["ratio_to_eager"] == pytest.approx(r["images_per_s"] / eager, abs=5.1e-4)
    train = report["train"]
    assert (train["models"], train["epochs"], train["epochs_done"], train["cut"]) == (49, 1, 1, None)
    assert train["paper_grid_h"] == pytest.approx(108 * 100 * train["epoch_times_s"][0] / 3600, abs=0.06)
    assert " K precision" in stdout  # the table is printed last


def test_tiny_run_slice_reads_as_a_sweep(tiny_run, tmp_path):
    from analysis.load import load_results
    from analysis.report import main as report_main
    from l2bn.grid import load_grid

    out, _ = tiny_run
    results = load_results(str(out))
    assert len(results.trials) == 49 and len(results.history) == 49
    assert set(results.trials.status) <= {"completed", "diverged"}
    assert (results.trials.optimizer == "sgd").all() and (results.trials.norm == "batch").all()
    assert results.trials.groupby(["lr", "l2"]).size().shape == (49,)  # the paper's 7 x 7
    # grid.yaml gives exactly the slice's trials (the paper grid's lr and l2 values)
    paper = load_grid("paper").configs()
    ids = sorted(c.trial_id for c in load_grid(str(out / "grid.yaml")).configs())
    assert ids == sorted(results.trials.trial_id)
    assert sorted(set(results.trials.lr)) == sorted({c.lr for c in paper if c.optimizer == "sgd"})
    assert report_main(["--results", str(out), "--out", str(tmp_path / "report"), "--no-figures"]) == 0
    assert (tmp_path / "report" / "report.md").is_file()


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_builder_writes_the_standard_layout_in_make_cifar10s_order(tmp_path):
    builder = load_script("cifar_jpeg")
    archive = tmp_path / "tiny.tar.gz"
    members = {f"train/{c}/{i:04d}.jpg": (20 * n, 10 * i, 200) for n, c in enumerate(builder.CLASSES)
               for i in (1, 0)}  # written out of order: the builder sorts by class, then name
    members |= {f"test/{c}/0000.jpg": (20 * n, 0, 50) for n, c in enumerate(builder.CLASSES[::-1])}
    with tarfile.open(archive, "w:gz") as tar:
        for name, colour in members.items():
            data = _jpeg(colour)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match=r"expected .*50000.* found \{'train': 20, 'test': 10\}"):
        builder.build(archive, tmp_path / "full")
    root = builder.build(archive, tmp_path / "d", full=False) / "cifar-10-batches-py"
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "rb") as f:
            batches.append(pickle.load(f, encoding="latin1"))  # how l2bn and torchvision read it
    train = {k: sum((b[k] for b in batches[:5]), []) for k in ("labels", "filenames")}
    train["data"] = np.concatenate([b["data"] for b in batches[:5]])
    order = sorted(members, key=lambda m: (builder.CLASSES.index(m.split("/")[1]), m))
    order = [m for m in order if m.startswith("train/")]
    shuffled = [order[i] for i in np.random.default_rng(0).permutation(20)]
    assert train["filenames"] == ["_".join(m.split("/")[1:]) for m in shuffled]
    assert train["labels"] == [builder.CLASSES.index(m.split("/")[1]) for m in shuffled]
    assert [len(b["labels"]) for b in batches] == [4] * 5 + [10]
    assert batches[5]["labels"] == list(range(10))  # test set sorted by class
    # channel-major rows: the first 1024 bytes are the red plane
    red = train["data"][:, :1024].mean(1)
    want = np.array([members[m][0] for m in shuffled])
    assert train["data"].dtype == np.uint8 and train["data"].shape == (20, 3072)
    assert np.abs(red - want).max() < 3  # JPEG rounding


@pytest.mark.slow
def test_builder_matches_the_ci_copy_of_the_full_archive(tmp_path, cifar_dir):
    """The vendored builder gives the same arrays, in the same order, as
    ../shared/data/make_cifar10.py gave the copy the tests read."""
    import torch

    from l2bn.data import read_cifar10_dir

    if not ARCHIVE.is_file():
        pytest.skip(f"the offline archive is not at {ARCHIVE}")
    built = read_cifar10_dir(load_script("cifar_jpeg").build(ARCHIVE, tmp_path))
    for ours, theirs in zip(built, read_cifar10_dir(cifar_dir), strict=True):
        assert torch.equal(ours.images, theirs.images) and torch.equal(ours.labels, theirs.labels)


def test_time_budget_plans_the_slice_and_skips_what_does_not_fit(tmp_path):
    dr = load_script("device_run")
    args = dr.parse_args(["--data-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    run = dr.Run(tmp_path / "out", budget_s=100.0)
    run.report["rates"] = [
        {"k": 1, "precision": "fp32", "mode": "eager", "images_per_s": 1000.0},
        {"k": 49, "precision": "fp32", "mode": "eager", "images_per_s": 98_000.0}]
    cfgs = dr.slice_configs(args, 1, str(tmp_path))
    assert len(cfgs) == 49 and {(c.optimizer, c.norm, c.update, c.seed) for c in cfgs} == {
        ("sgd", "batch", "l2", 0)} and cfgs[0].n_train is None and cfgs[0].width == 32
    # 1.2 x 49 models x (50,000 + 10,000/3 images) / 98,000 img/s = 32 s an epoch
    assert dr.plan_epochs(run, cfgs, 240.0) == 7 and dr.plan_epochs(run, cfgs, 10.0) == 1
    assert dr.plan_epochs(run, [c.replace(precision="bf16") for c in cfgs], 240.0) == 1  # unmeasured
    # (1 warm-up + 3 timed) x 30 steps x 128 images x 8 models / 1,000 img/s + 2 s
    assert dr.estimate_s(run, args, 8, "fp32", False) == pytest.approx(124.88)
    assert dr.estimate_s(run, args, 49, "fp32", True) == pytest.approx(4 * 30 * 128 * 49 / 98_000 + 62)
    assert dr.estimate_s(run, args, 1, "bf16", False) == dr.UNKNOWN_S  # nothing to go by yet
    # 100 s left, but the slice's 240 s are kept free before it ran: nothing is timed
    base = cfgs[0].replace(lr=0.1, l2=0.0)
    dr.bench(run, args, base, [1, 8], compiled=False)
    assert len(run.report["rates"]) == 2
    assert [(s["k"], s["precision"]) for s in run.report["skipped"]] == [(1, "fp32"), (1, "bf16")]


def test_the_grow_phase_stops_on_eager_rates_only(tmp_path, monkeypatch):
    """The eager grow phase goes on while each K is at least 3% faster than the best eager
    rate of its precision; a compiled row at K = 49 faster than every eager one does not
    count. fp32: 1100 >= 1.03 * 1000, 1200 >= 1.03 * 1100, 1210 < 1.03 * 1200 -> stop
    after K = 128; bf16: 2100 >= 2060, 2110 < 2163 -> stop after K = 96. Measured against
    the compiled 5000 and 3000, each would stop at its first K."""
    dr = load_script("device_run")
    args = dr.parse_args(["--data-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    run = dr.Run(tmp_path / "out", budget_s=1e6)
    rows = [(1, "fp32", "eager", 100.0), (49, "fp32", "eager", 1000.0),
            (49, "fp32", "compiled", 5000.0), (49, "bf16", "eager", 2000.0),
            (49, "bf16", "compiled", 3000.0)]
    run.report["rates"] = [{"k": k, "precision": p, "mode": m, "images_per_s": r}
                           for k, p, m, r in rows]
    run.report["train"] = {}  # the slice ran: nothing kept back for it
    grown = {"fp32": {64: 1100.0, 96: 1200.0, 128: 1210.0, 192: 2000.0},
             "bf16": {64: 2100.0, 96: 2110.0, 128: 4000.0, 192: 4000.0}}
    timed = []

    def fake_time_one(run, args, base, k, precision, compiled):
        row = {"k": k, "precision": precision, "mode": "compiled" if compiled else "eager",
               "images_per_s": grown[precision][k]}
        timed.append((k, precision, row["mode"]))
        run.report["rates"].append(row)
        return row

    monkeypatch.setattr(dr, "time_one", fake_time_one)
    dr.bench(run, args, dr.TrialConfig(), [64, 96, 128, 192], compiled=False, grow=True)
    assert timed == [(64, "fp32", "eager"), (96, "fp32", "eager"), (128, "fp32", "eager"),
                     (64, "bf16", "eager"), (96, "bf16", "eager")]
    assert run.report["skipped"] == []
    assert [r["k"] for r in run.rates("fp32")] == [1, 49, 64, 96, 128]  # eager only
    assert [r["images_per_s"] for r in run.rates("fp32", "compiled")] == [5000.0]
    assert [r["k"] for r in run.rates("bf16", max_k=64)] == [49, 64]


def test_a_missing_data_copy_is_one_line_at_once(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "device_run.py"), "--data-dir",
                           str(tmp_path), "--device", "cpu", "--out", str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr == ""
    assert proc.stdout.strip().splitlines()[-1].endswith(f"error: {tmp_path}: no 'cifar-10-batches-py' "
                                                         "directory here (data_dir must hold the "
                                                         "extracted cifar-10-python.tar.gz)")
    assert (tmp_path / "out" / "log.txt").read_text().count("error:") == 1

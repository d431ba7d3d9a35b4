"""Run a grid of l2bn trials on Ray Tune; results land as Parquet under <storage>/<name>/.

    python sweeps/run_grid.py --grid smoke --data-dir ~/data/cifar10     # local Ray instance
    python sweeps/run_grid.py --grid paper --address auto --storage s3://bucket/sweeps \\
        --gpus-per-trial 0.25 --cpus-per-trial 2                         # on a Ray cluster
    python sweeps/run_grid.py --grid paper --dry-run                     # count + summary

Running the same command again continues the sweep (its Parquet files are the record):
finished trials are skipped, interrupted groups continue from their last checkpoint, failed
ones are retried, and this run's options apply (sweeps/resume.py).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python sweeps/run_grid.py` from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from l2bn.config import EXECUTION_FIELDS, TrialConfig  # noqa: E402
from l2bn.grid import GRID_DIR, GridError, describe_diagonals, groups, load_grid, parse_value, summary  # noqa: E402
from l2bn.store import ResultStore  # noqa: E402
from sweeps import ray_env  # noqa: E402
from sweeps.errors import SweepError  # noqa: E402
from sweeps.fuse import available_cpus, parse_fuse, resolve  # noqa: E402
from sweeps.resume import latest_checkpoints, resume_changes, run_options, unfinished_groups  # noqa: E402

DEFAULT_STORAGE = "~/l2bn-sweeps"
EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE = 1, 130, 2


@dataclass
class SweepOptions:
    """Everything run_sweep needs besides the trial configs."""

    name: str
    storage: str
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_failures: int = 2
    reuse_actors: bool = True
    checkpoint_every: int = 1               # epochs between checkpoints
    keep_checkpoints: int = 2               # per trial
    num_cpus: int | None = None          # embedded local instance only
    overrides: dict[str, Any] = field(default_factory=dict)   # execution fields for every trial
    progress_interval: float = 30.0
    progress: bool = True                   # print live progress lines
    tensorboard: bool = False               # Tune's TBXLoggerCallback, per-epoch scalars
    mlflow: str | None = None               # an MLflow tracking URI (sweeps/mlflow_logger.py)
    grid_source: str = ""
    fuse: int | None = 1                    # models per Tune trial (None: whole lr x l2 groups)
    fuse_probe: dict[str, Any] | None = None  # --fuse auto's measured rates and choice (sweeps/fuse.py)


@dataclass
class SweepOutcome:
    """What a sweep left behind, counted from its `trials` Parquet files."""

    statuses: dict[str, str]                 # trial_id -> completed/diverged/failed/missing
    fit_wall_s: float
    results_uri: str

    def count(self, status: str) -> int:
        return sum(s == status for s in self.statuses.values())


def storage_root(storage: str) -> str:
    """Cloud URIs as given; local paths absolute (every Ray worker sees the same string)."""
    if "://" in storage and not storage.startswith("file://"):
        return storage.rstrip("/")
    return str(Path(storage.removeprefix("file://")).expanduser().resolve())


def check_same_grid(store: ResultStore, configs: list[TrialConfig],
                    opts: SweepOptions) -> dict[str, Any] | None:
    """Refuse to resume a sweep that was started with a different grid (Tune cannot do that);
    a new sweep's sweep.json is written. Returns the sweep.json found (None: a new sweep)."""
    ids = sorted(c.trial_id for c in configs)
    try:
        old = store.read_meta()
    except ValueError as exc:
        raise SweepError(f"{exc}: cannot tell which grid the sweep '{opts.name}' ran; pass a new "
                        "--name (or delete the sweep's folder)") from None
    if old is None:
        store.write_meta({"name": opts.name, "n_trials": len(ids), "trial_ids": ids,
                          "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                          "grid": opts.grid_source, "options": run_options(opts),
                          "fuse_probe": opts.fuse_probe})
    elif old.get("trial_ids") != ids:
        raise SweepError(
            f"sweep '{opts.name}' in {opts.storage} was started with a different grid "
            f"({old.get('n_trials')} trials; this one has {len(ids)}). A sweep's grid cannot "
            "change: pass a new --name (or delete the old sweep)")
    return old


def _env_for_workers() -> dict[str, str]:
    from l2bn.provenance import git_revision
    return {"L2BN_GIT_REV": git_revision(), **ray_env.worker_env(),
            "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore::DeprecationWarning")}


def run_sweep(configs: list[TrialConfig], opts: SweepOptions) -> SweepOutcome:
    """Run (or continue) the configs, one Tune trial per unfinished group of at most `opts.fuse`
    grid points that differ only in lr and l2; return the counted outcome."""
    ray_env.set_switches()  # Tune's own files light (our Parquet files are the record), quiet
    import ray
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner
    from ray.tune.logger import CSVLoggerCallback

    from sweeps.callbacks import FailedTrialWriter, OneLineTrialErrors, Progress, trial_dirname, trial_name
    from sweeps.trainable import run_trial
    from sweeps.watch import WATCHED, watch_callbacks

    ray_env.quiet_driver_loggers(OneLineTrialErrors())
    store = ResultStore(opts.storage, opts.name)
    old = check_same_grid(store, configs, opts)
    resuming = old is not None
    changes = resume_changes(store, opts, old) if resuming else []
    watchers = watch_callbacks(opts)
    todo = unfinished_groups(store, configs, opts.fuse)
    earlier = latest_checkpoints(store, todo) if resuming else {}
    if resuming:
        left = sum(len(g) for g in todo)
        print(f"resuming sweep '{opts.name}' from {store.uri()}: {len(configs) - left} of "
              f"{len(configs)} trials finished; {len(todo)} Tune trials to run, {len(earlier)} "
              "from a checkpoint", flush=True)
        for change in changes:
            print(f"resume applies {change}", flush=True)
    if not todo:
        return _outcome(store, configs, 0.0)
    if not ray.is_initialized():
        # "local": a new instance even where `ray start` left one on this machine (ray.init()
        # would join it, and refuse num_cpus); --address (or Ray's address variable) joins a cluster.
        ray.init(address=opts.address or "local", num_cpus=None if opts.address else opts.num_cpus,
                 runtime_env={"env_vars": _env_for_workers()}, include_dashboard=False,
                 logging_level="WARNING", log_to_driver=True)
    threads = max(1, int(opts.cpus_per_trial))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, store=store, overrides=opts.overrides, threads=threads,
                             checkpoint_every=opts.checkpoint_every,
                             report_keys=WATCHED if watchers else (), earlier=earlier),
        {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})
    callbacks = [FailedTrialWriter(store, opts.overrides),
                 CSVLoggerCallback()]  # one small progress.csv per trial, for Tune's ResultGrid
    if opts.progress:
        callbacks.append(Progress(opts.progress_interval))
    callbacks += watchers
    rows = [[c.to_row() for c in group] for group in todo]
    tuner = Tuner(  # a fresh Tuner each run: never Tuner.restore (sweeps/resume.py)
        trainable,
        param_space={"group": tune.grid_search(rows)},
        tune_config=TuneConfig(reuse_actors=opts.reuse_actors, trial_name_creator=trial_name,
                               trial_dirname_creator=trial_dirname),
        run_config=RunConfig(
            name=opts.name, storage_path=opts.storage, verbose=0, callbacks=callbacks,
            failure_config=FailureConfig(max_failures=opts.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=opts.keep_checkpoints)))
    start = time.perf_counter()
    tuner.fit()
    return _outcome(store, configs, time.perf_counter() - start)


def _outcome(store: ResultStore, configs: list[TrialConfig], fit_wall_s: float) -> SweepOutcome:
    """Each trial's status from its `trials` row ('missing' without one)."""
    statuses = {}
    for cfg in configs:
        row = store.read_trial(cfg.trial_id)
        statuses[cfg.trial_id] = row["status"] if row else "missing"
    return SweepOutcome(statuses, fit_wall_s, store.uri())


def describe_fuse(configs: list[TrialConfig], fuse: int | None, flag: str) -> str:
    """'9 Tune trials of 1-1 models each (--fuse 1)'."""
    sizes = [len(g) for g in groups(configs, fuse)]
    return f"{len(sizes)} Tune trials of {min(sizes)}-{max(sizes)} models each (--fuse {flag})"


def parse_sets(items: list[str]) -> dict[str, Any]:
    """--set key=value pairs, values read as YAML scalars."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SweepError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def _default(name: str) -> Any:
    """SweepOptions' default for a field: the one place sweep defaults are written."""
    return SweepOptions.__dataclass_fields__[name].default


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: `--data synthetic` must be an error, not --data-dir ./synthetic
    p = argparse.ArgumentParser(prog="python sweeps/run_grid.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    shipped = ", ".join(sorted(f.stem for f in GRID_DIR.glob("*.yaml")))
    p.add_argument("--grid", required=True, help=f"a grid in sweeps/grids ({shipped}) or a .yaml path")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="hold a TrialConfig field at VALUE for every trial (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the trial count and summary, start nothing")
    p.add_argument("--name", help="sweep name (default: the grid's name)")
    p.add_argument("--storage", default=os.environ.get("L2BN_STORAGE", DEFAULT_STORAGE),
                   help="local path or s3:// / gs:// URI shared by all nodes "
                        f"(default: $L2BN_STORAGE or {DEFAULT_STORAGE})")
    p.add_argument("--data-dir", help="a local CIFAR-10 copy (holding cifar-10-batches-py) that "
                                      "exists on every node; default: download once per node")
    p.add_argument("--address", default=_default("address"),
                   help=f"Ray cluster to join ('auto' = the running one; also ${ray_env.ADDRESS_ENV}); "
                        "default: start a local Ray instance")
    p.add_argument("--fuse", default="auto", metavar="N|auto",
                   help="grid points (differing only in lr and l2) trained as one stack of models "
                        "per Tune trial; 1 = one model per trial; auto = whole lr x l2 groups "
                        "with --gpus-per-trial > 0, else the models per stack and threads per "
                        "trial that a few-second probe at sweep start measured fastest")
    p.add_argument("--reprobe", action="store_true",
                   help="--fuse auto: measure again instead of reusing this machine's cached "
                        "probe of the same shape ($L2BN_CACHE/probe.json)")
    p.add_argument("--cpus-per-trial", type=float,
                   help="CPUs (and torch threads) per Tune trial; default: --fuse auto's "
                        f"choice on CPUs, else {_default('cpus_per_trial'):g}")
    p.add_argument("--gpus-per-trial", type=float, default=_default("gpus_per_trial"),
                  help="fractions share a GPU, e.g. 0.25")
    p.add_argument("--num-cpus", type=int, default=_default("num_cpus"),
                  help="CPUs of the local Ray instance (default: those this process may use,"
                       " i.e. its CPU affinity under taskset or Slurm)")
    p.add_argument("--max-failures", type=int, default=_default("max_failures"),
                  help="retries per trial (from its last epoch)")
    p.add_argument("--checkpoint-every", type=int, default=_default("checkpoint_every"), metavar="EPOCHS",
                   help="epochs between checkpoints (a retried trial resumes from the last one)")
    p.add_argument("--keep-checkpoints", type=int, default=_default("keep_checkpoints"),
                  help="checkpoints kept per trial")
    p.add_argument("--no-reuse-actors", dest="reuse_actors", action="store_false",
                   help="start a fresh worker process per trial")
    p.add_argument("--tensorboard", action="store_true",
                   help="log per-epoch metrics and per-layer norms/angles as TensorBoard scalars "
                        "(Tune's TBXLoggerCallback) into each trial's folder under <storage>/<name>")
    p.add_argument("--mlflow", metavar="URI",
                   help="log each Tune trial as an MLflow run (sweeps/mlflow_logger.py) to this "
                        "tracking URI, e.g. file:///path/mlruns or http://mlflow:5000")
    p.add_argument("--progress-interval", type=float, default=_default("progress_interval"),
                  help="seconds between status lines")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = parse_sets(args.sets)
        if args.data_dir:
            overrides["data_dir"] = str(Path(args.data_dir).expanduser().resolve())
        grid = load_grid(args.grid, overrides)
        configs = grid.configs()
        fuse = parse_fuse(args.fuse)
    except (GridError, SweepError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.dry_run:
        print(summary(configs, grid))
        iso = describe_diagonals(grid.diagonals(configs))
        if iso:
            print(iso)
        print(f"collapse forecast (which cells are decidable): python -m analysis.plan {args.grid}")
        if fuse is None and args.gpus_per_trial <= 0:
            print("--fuse auto: models per Tune trial chosen by a timed probe at sweep start")
        else:
            print(describe_fuse(configs, fuse, args.fuse))
        return 0
    address = ray_env.cluster_address(args.address)
    if not address:  # a local instance: the driver's disk is every trial's disk
        from l2bn.data import DataError
        try:
            prepare_local_data(configs, overrides.get("data_dir"))
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    name, storage = args.name or grid.name, storage_root(args.storage)
    # The probe plans for the CPUs this process may use (its affinity, as under taskset or
    # Slurm); a local Ray gets the same count, since Ray's own default counts every CPU.
    cpus = available_cpus(args.num_cpus)
    try:
        choice = resolve(fuse, args.cpus_per_trial, args.gpus_per_trial, configs,
                         ResultStore(storage, name), cpus, not address, args.reprobe)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    opts = SweepOptions(
        name=name, storage=storage, address=address,
        cpus_per_trial=choice.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        max_failures=args.max_failures, reuse_actors=args.reuse_actors,
        num_cpus=None if address else cpus,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        overrides={k: v for k, v in overrides.items() if k in EXECUTION_FIELDS},
        progress_interval=args.progress_interval, grid_source=Path(grid.path).read_text(),
        fuse=choice.fuse, fuse_probe=choice.probe, tensorboard=args.tensorboard, mlflow=args.mlflow)
    print(f"sweep '{opts.name}': {len(configs)} trials as {describe_fuse(configs, choice.fuse, args.fuse)}"
          f", {opts.cpus_per_trial:g} CPUs each -> {opts.storage}/{opts.name}", flush=True)
    try:
        outcome = run_sweep(configs, opts)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return report_outcome(outcome)


def prepare_local_data(configs: list[TrialConfig], data_dir: str | None) -> None:
    """Before any trial starts: check --data-dir, or download CIFAR-10 once into the cache the
    trials read (under its file lock); DataError (one line naming --data-dir) if that fails."""
    from l2bn.data import DataError, batch_folder, default_cache_dir, download_cifar10
    if data_dir:
        try:
            batch_folder(data_dir)
        except DataError as exc:
            raise DataError(f"--data-dir {exc}") from None
    elif any(c.data == "cifar10" and c.data_dir is None for c in configs):
        print(f"CIFAR-10: checking the cache {default_cache_dir()} (downloading once if needed)",
              flush=True)
        download_cifar10()


def report_outcome(outcome: SweepOutcome) -> int:
    """Print the final tally; exit 0 only if every trial finished (completed or diverged)."""
    n = len(outcome.statuses)
    tally = ", ".join(f"{outcome.count(s)} {s}" for s in ("completed", "diverged", "failed", "missing"))
    print(f"{n} trials: {tally} ({outcome.fit_wall_s:.0f} s)")
    print(f"results: {outcome.results_uri}/trials and {outcome.results_uri}/history "
          "(pandas.read_parquet or pyarrow.dataset)")
    if outcome.count("missing"):
        print("the sweep stopped before every trial finished: run the same command again to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    if outcome.count("failed"):
        failed = [t for t, s in outcome.statuses.items() if s == "failed"]
        print(f"failed trials (see the 'error' column): {failed[:10]}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def exit_now(code: int) -> None:
    """Stop Ray, flush, and end the process without the interpreter's teardown: with torch,
    pyarrow and ray loaded it takes about 1 s after all work is done (every file is written
    and closed by then)."""
    ray = sys.modules.get("ray")  # not imported by a dry run or an error before Tune
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())

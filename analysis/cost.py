"""python -m analysis.cost RESULTS: what a sweep's training cost, from its history rows.

A fused group trains K models as one stack, and each of its models' history rows for an epoch
carries the group's `epoch_time_s` and running `time_s` (l2bn/train.py), so one group-epoch
is the set of rows sharing (epoch, epoch_time_s, time_s). Slot-seconds are the sum of
epoch_time_s over group-epochs (a slot: one Tune trial's CPUs or GPU, busy for that time);
core-hours are slot-hours times the cores per slot. Running trials count as far as they got.
Not counted: Ray's start-up and scheduling between trials, and epochs recomputed after a
resume from a checkpoint (their rows are replaced).
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd

from l2bn import store
from l2bn.schema import HISTORY

from .load import ResultsError, list_parquet, open_results, read_tables

GROUP_KEY = ["epoch", "epoch_time_s", "time_s"]


def study_cost(history: pd.DataFrame) -> dict:
    """Models, epochs, model-images, slot-hours and model-images per slot-second of a history."""
    timed = history[history["epoch_time_s"].notna()]
    group_epochs = timed.groupby(GROUP_KEY, sort=False).size()
    slot_s = float(group_epochs.index.get_level_values("epoch_time_s").to_numpy().sum())
    images = int(history["train_images"].fillna(0).sum())
    return {"models": int(history["trial_id"].nunique()), "model_epochs": len(history),
            "group_epochs": len(group_epochs), "models_per_group_median":
            float(group_epochs.median()) if len(group_epochs) else 0.0,
            "model_images": images, "slot_hours": slot_s / 3600,
            "images_per_slot_s": images / slot_s if slot_s else float("nan")}


def describe(cost: dict, cores_per_slot: float) -> str:
    """One line a README can quote."""
    return (f"{cost['models']:,} models, {cost['model_epochs']:,} model-epochs in "
            f"{cost['group_epochs']:,} group-epochs (median {cost['models_per_group_median']:g} "
            f"models per group); {cost['model_images'] / 1e6:,.1f} M model-images in "
            f"{cost['slot_hours']:.2f} slot-hours = {cost['slot_hours'] * cores_per_slot:.2f} "
            f"core-hours at {cores_per_slot:g} core(s) per slot; "
            f"{cost['images_per_slot_s']:,.0f} model-images/s per slot")


def main(argv: list[str] | None = None) -> int:
    """Print the cost line; exit 2 with one line when the folder holds no history."""
    parser = argparse.ArgumentParser(prog="python -m analysis.cost", description=__doc__.split(
        "\n")[0].split(": ", 1)[1])
    parser.add_argument("results", help="a sweep's storage folder or a compacted results folder")
    parser.add_argument("--cores-per-slot", type=float, default=1.0,
                        help="CPU cores each Tune trial held (run_grid's --cpus-per-trial)")
    args = parser.parse_args(argv)
    if args.cores_per_slot <= 0:
        parser.error(f"--cores-per-slot: expected a positive number, got {args.cores_per_slot:g}")
    try:
        fs, base = open_results(args.results)
        if not store.exists(fs, base):
            raise ResultsError(f"results path not found: {args.results}")
        history, bad = read_tables(fs, list_parquet(fs, base, HISTORY))
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if history.empty or "epoch_time_s" not in history:
        print(f"error: {args.results}: no history rows (expected Parquet files in "
              f"{args.results}/{HISTORY}/)", file=sys.stderr)
        return 2
    print(describe(study_cost(history), args.cores_per_slot))
    for trial_id, reason in sorted(bad.items()):
        print(f"warning: {trial_id}: not counted ({reason})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m analysis.rule_changes RESULTS [--from A --to B]: what each change between two
rules versions moves (default: from "2" to the current version).

Applies the changes of analysis/rules.py's version B one at a time, in order, to version A
and judges the same Parquet files after each: a Markdown table of every verdict that
moves (and of the checks a version adds). Shows on earlier data what a new version changes, before
it judges new data (README "Results").
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import pandas as pd

from . import rules as R
from .collapse import CheckSettings, run_checks, verdict_table
from .load import ResultsError, load_results
from .summary import _short

STEPS = ("outcome_evals", "chance_guard", "train_loss", "iso_test",
         "forecast_fallback")  # in the order applied


def variants(old: str = "2", new: str = R.RULES_VERSION) -> list[tuple[str, R.Version]]:
    """(label, Version) after each change of `new` applied cumulatively to `old`."""
    out, current = [(old, R.version(old))], R.version(old)
    for step in STEPS:
        value = getattr(R.version(new), step)
        if getattr(current, step) != value:
            current = dataclasses.replace(current, name=f"{current.name}+{step}", **{step: value})
            out.append((f"+ {step}={value}", current))
    return out


def verdicts(uri: str, n_boot: int = 200, old: str = "2",
             new: str = R.RULES_VERSION) -> pd.DataFrame:
    """One row per (check, cell), one verdict column per variant."""
    results = load_results(uri)
    table = None
    for label, v in variants(old, new):
        checks = run_checks(results, CheckSettings(n_boot=n_boot, rules=v), False)
        col = verdict_table(checks).set_index(["check", "cell"])["verdict"].rename(label)
        table = col.to_frame() if table is None else table.join(col, how="outer")
    return table.reset_index()


def markdown(table: pd.DataFrame) -> str:
    """The verdicts that differ between variants (new checks: '' before they exist)."""
    labels = [c for c in table if c not in ("check", "cell")]
    moved = table[table[labels].fillna("").nunique(axis=1) > 1]
    lines = ["| check | cell | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 2)]
    for r in moved.itertuples(index=False):
        cells = ["" if pd.isna(v) else v for v in r[2:]]
        lines.append(f"| {r.check} | {_short(r.cell)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the table; exit 2 with one line when the results are unusable."""
    parser = argparse.ArgumentParser(prog="python -m analysis.rule_changes", description=__doc__)
    parser.add_argument("results", help="a sweep's results (local path or URI), e.g. results/v2")
    known = sorted(R.VERSIONS)
    parser.add_argument("--from", dest="old", choices=known, default="2",
                        help="the rules version the changes start from (default 2)")
    parser.add_argument("--to", dest="new", choices=known, default=R.RULES_VERSION,
                        help=f"the rules version whose changes are applied (default {R.RULES_VERSION})")
    args = parser.parse_args(argv)
    if known.index(args.old) >= known.index(args.new):
        parser.error(f"--from {args.old} must be an earlier rules version than --to {args.new}")
    try:
        print(markdown(verdicts(args.results, old=args.old, new=args.new)))
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

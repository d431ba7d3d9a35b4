"""python -m analysis.summary RESULTS/collapse.json: one Markdown table, a row per cell.

Reads a report's collapse.json (no Parquet, no torch) and puts each cell's verdicts side by
side with the numbers behind them: the collapse slope s with its interval and the theory's
value, the lack-of-fit p, the projection's l2 effect, the equilibrium's norm balance, the
median dead-channel fraction of conv3 and the cell's best test error. README's results
tables are this output.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

COLUMNS = ["cell", "collapse", "s [95% CI] (theory)", "lack-of-fit p (adj)", "iso-lines",
           "along [90% CI]", "train-loss collapse", "train-loss s [95% CI]", "projection",
           "l2 effect [90% CI]", "equilibrium", "balance", "conv3 dead", "best error"]


def _num(value, fmt: str = ".3f") -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, fmt)


def _short(cell: str) -> str:
    """'sgd/batch/l2, l2_scope=all, scale_invariant=False' -> 'sgd/batch/l2 all'."""
    head, _, setting = cell.partition(", ")
    parts = dict(p.split("=", 1) for p in setting.split(", ") if "=" in p)
    label = head + (f" {parts['l2_scope']}" if "l2_scope" in parts else "")
    return label + (" scale-invariant" if parts.get("scale_invariant") == "True" else "")


def rows(payload: dict) -> list[dict]:
    """One dict per cell (every cell any check or the cells table names), in cell order."""
    by = {name: {r["cell"]: r for r in payload.get(name, [])}
          for name in ("collapse", "projection", "equilibrium", "cells", "collapse_train")}
    out = []
    for cell in sorted(set().union(*by.values())):
        c, p, e, k, t = (by[name].get(cell, {}) for name in by)
        out.append({"cell": _short(cell), "collapse": _verdict(c), COLUMNS[2]: _slope(c),
                    COLUMNS[3]: _num(c.get("lof_p_adj"), ".2g"),
                    "iso-lines": _verdict(c, "iso_verdict"),
                    "along [90% CI]": _effect(c, "iso_along"),
                    "train-loss collapse": _verdict(t), "train-loss s [95% CI]": _slope(t),
                    "projection": _verdict(p), "l2 effect [90% CI]": _effect(p, "l2_effect"),
                    "equilibrium": _verdict(e), "balance": _num(e.get("balance_median")),
                    "conv3 dead": _num(k.get("conv3_dead_median"), ".2f"),
                    "best error": _num(k.get("best_error"))})
    return out


def _verdict(row: dict, key: str = "verdict") -> str:
    """A row's verdict, with the verdict under each edge factor when they disagree."""
    verdict = row.get(key, "")
    by_edge = row.get(f"{key}_by_edge") or []
    if len(set(by_edge)) > 1:
        verdict += " (not robust: " + "/".join(by_edge) + ")"
    return verdict


def _effect(row: dict, key: str) -> str:
    """'+0.0123 [-0.0010, +0.0250]': an effect with its 90% interval."""
    if row.get(key) is None:
        return ""
    return f"{row[key]:+.4f} [{row[f'{key}_low']:+.4f}, {row[f'{key}_high']:+.4f}]"


def _slope(c: dict) -> str:
    """'0.95 [0.81, 1.10] (1)': a collapse row's s, interval and the theory's s."""
    if c.get("s") is None:
        return ""
    interval = "" if c.get("ci_low") is None else \
        f" [{_num(c['ci_low'], '.2f')}, {_num(c.get('ci_high'), '.2f')}]"
    return f"{c['s']:.2f}{interval} ({c['s_theory']:g})"


def markdown(payload: dict) -> str:
    """The table as Markdown, headed by the rules version it was judged under."""
    cols = COLUMNS
    lines = [f"Protocol {payload.get('protocol', '?')}.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r[col] for col in cols) + " |" for r in rows(payload)]
    return "\n".join(lines)


OPTIMUM_COLUMNS = ["cell", "product", "design", "best point", "p* [95% CI]", "inside",
                   "p* per lr [95% CI]", "lr minima overlap"]


def optimum_rows(payload: dict) -> list[dict]:
    """One dict per cell of collapse.json's `optimum` table (analysis/optimum.py)."""
    out = []
    for o in payload.get("optimum", []):
        product = "lr*l2" if o["s_theory"] == 1 else f"lr^{1 / o['s_theory']:g}*l2"
        per_lr = "; ".join(f"lr {lr:g}: {_interval(v, lo, hi)}" for lr, v, lo, hi in o["per_lr"])
        out.append({"cell": _short(o["cell"]), "product": product,
                    "design": f"{o['p_min']:.3g}..{o['p_max']:.3g}",
                    "best point": f"{o['p_best_point']:.3g}"
                                  + (" (interior)" if o["best_interior"] else " (an end)"),
                    "p* [95% CI]": _interval(o["p_star"], o["p_star_low"], o["p_star_high"]),
                    "inside": "yes" if o["inside"] else "no", "p* per lr [95% CI]": per_lr,
                    "lr minima overlap": {True: "yes", False: "no"}.get(
                        o["lr_minima_overlap"], "n/a (all at one end)")})
    return out


def _interval(value, low, high) -> str:
    """'3.1e-05 [1.2e-05, 6e-05]', or 'n/a' (fewer than 3 products on the curve)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.2g} [{_num(low, '.2g') or '?'}, {_num(high, '.2g') or '?'}]"


def optimum_markdown(payload: dict) -> str:
    """The optimum table as Markdown."""
    cols = OPTIMUM_COLUMNS
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r[col] for col in cols) + " |" for r in optimum_rows(payload)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the table; exit 2 with one line when the file is missing or not collapse.json."""
    parser = argparse.ArgumentParser(prog="python -m analysis.summary",
                                     description="The per-cell verdict table of a report.")
    parser.add_argument("results", help="a report's collapse.json, or the folder holding it")
    parser.add_argument("--optimum", action="store_true",
                        help="the best effective learning rate per cell instead (its product "
                             "p*, the bootstrap interval over seeds, each lr's own minimum)")
    args = parser.parse_args(argv)
    path = Path(args.results)
    path = path / "collapse.json" if path.is_dir() else path
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"error: {path}: expected a report's collapse.json ({exc})", file=sys.stderr)
        return 2
    if not isinstance(payload, dict) or "verdicts" not in payload:
        print(f"error: {path}: expected a report's collapse.json (no 'verdicts')", file=sys.stderr)
        return 2
    print(optimum_markdown(payload) if args.optimum else markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())

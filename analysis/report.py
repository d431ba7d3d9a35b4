"""python -m analysis.report --results <storage>/<name>: the paper's plots and collapse checks.

Reads the sweep's Parquet results (local path or s3:// / gs:// URI; a sweep still running or
partly failed is fine: skipped trials are listed with their reason) and writes into --out:
report.html (self-contained), report.md, every figure as PNG and SVG, collapse.csv and
collapse.json. Prints a verdict table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots, regimes
from . import protocol as P
from .collapse import (
    Checks,
    CheckSettings,
    missing_points,
    run_checks,
    verdict_table,
)
from .document import Block, Bullets, FigureRef, Heading, Table, Text, to_html, to_markdown
from .export import to_csv_frame, to_json
from .load import Results, ResultsError, load_results

# In the report's order; figure 7 sits right after figure 2, whose points it describes, and
# keeps the number in its name (the file names of earlier reports stay valid).
FIGURES = {
    "fig1_heatmaps": "Test error over (lr, l2) per optimizer/norm/update, with the theory's "
                     "iso-lines (lr*l2 = const for sgd/momentum/adamw, lr^2*l2 = const for adam; "
                     "constant lr for projection) and the fitted direction.",
    "fig2_collapse": "Test error against the theory's effective-LR proxy, coloured by l2: "
                     "with a normalization the points should fall on one curve.",
    "fig7_dead_channels": "Dead-channel fraction per conv layer at the last epoch against the "
                          "effective-LR proxy of figure 2: where a collapse breaks, are channels "
                          "dead?",
    "fig3_l2_sensitivity": "Test error against l2 at each lr, update=l2 beside "
                           "update=projection: projection should be flat in l2 until l2 is large.",
    "fig4_dynamics": "Per-layer dynamics over training for chosen cells: weight norm, measured "
                     "effective LR and angular update, predicted equilibrium dashed.",
    "fig5_best_over_lr": "Best test error over lr against l2, per norm x update: does L2 help "
                         "at all once lr is tuned?",
    "fig6_control_heatmaps": "Control without normalization (norm=none): the same heatmaps, "
                             "where the collapse should not hold.",
    "fig8_optimum": "Test error against the invariant product, one line per lr: where is the "
                    "best effective learning rate, and do the lr curves share it?",
    "fig9_regimes": "The fully scale-invariant network at a fixed effective learning rate: "
                    "train loss and test error per seed, regimes shaded, and where the same "
                    "network trained with L2 settles.",
}
FIGURE_NUMBERS = {name: int(name.split("_")[0].removeprefix("fig")) for name in FIGURES}
COLLAPSE_COLUMNS = ["cell", "role", "n_points", "n_ready", "n_excluded", "n_lr", "n_l2", "dof",
                    "s", "ci_low", "ci_high", "s_theory", "lof_p", "lof_p_adj", "slope_p_equiv",
                    "slope_p_equiv_adj", "slope_p_out", "slope_p_out_adj", "r2adj_1d",
                    "r2adj_lr", "r2adj_l2", "gain", "verdict_by_edge", "verdict"]
ISO_COLUMNS = ["cell", "n_diagonals", "n_iso_points", "iso_products", "iso_slope", "iso_slope_se",
               "iso_along", "iso_along_low", "iso_along_high", "iso_p_equiv", "iso_p_equiv_adj",
               "iso_p_out", "iso_p_out_adj", "iso_across_p", "iso_across_p_adj", "iso_across",
               "iso_verdict_by_edge", "iso_verdict"]
PROJECTION_COLUMNS = ["cell", "n_points", "large_l2", "n_large_l2", "l2_effect", "l2_effect_low",
                      "l2_effect_high", "l2_p_equiv", "l2_p_equiv_adj", "l2_p_out",
                      "l2_p_out_adj", "lr_p", "verdict_by_edge", "verdict"]
EQUILIBRIUM_COLUMNS = ["cell", "n_points", "balance_exponent", "balance_median", "balance_q25",
                       "balance_q75", "ratio_median", "verdict_by_edge", "verdict"]
SENSITIVITY_COLUMNS = ["cell", "check", "variant", "dof", "n_points", "s", "ci_low", "ci_high",
                       "lof_p", "verdict"]


def parse_cell(text: str) -> dict:
    """'optimizer=sgd,norm=batch,lr=0.1,l2=5e-4' -> dict (lr, l2 as floats)."""
    out = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep or key not in ("optimizer", "norm", "update", "lr", "l2"):
            raise argparse.ArgumentTypeError(
                f"bad --dynamics part {part!r}: expected key=value with key in "
                "optimizer, norm, update, lr, l2")
        out[key] = float(value) if key in ("lr", "l2") else value
    return out


def choose_dynamics(points: pd.DataFrame, requested: list[dict],
                    max_cells: int) -> tuple[list[dict], list[str]]:
    """The (cell, lr, l2) points for figure 4: the requested ones, else per optimizer the best
    equilibrated, non-diverged, normalized update=l2 point (warnings for unmatched requests)."""
    warnings, chosen = [], []
    for req in requested:
        mask = pd.Series(True, points.index)
        for key, value in req.items():
            mask &= np.isclose(points[key], value, rtol=1e-6) if key in ("lr", "l2") \
                else points[key].eq(value)
        match = points[mask].sort_values("cell")
        if match.empty:
            warnings.append(f"--dynamics {req}: no such point; not plotted")
        chosen += match.head(1).to_dict("records")
    if not requested:
        ok = points[(points["n_diverged"] == 0) & (points["norm"] != "none")
                    & (points["update"] == "l2") & (points["l2"] > 0)]
        ok = ok[ok["equilibrated"]] if ok["equilibrated"].any() else ok
        ok = ok.sort_values(["error_mean", "cell", "lr", "l2"])
        chosen = ok.groupby("optimizer", sort=True).head(1).sort_values("optimizer").to_dict("records")
    return chosen[:max_cells], warnings


def make_figures(results: Results, checks: Checks, dynamics_cells: list[dict],
                 study: regimes.Study) -> dict:
    """name -> Figure or None, in FIGURES order."""
    p = checks.points
    normalized, control = p[p["norm"] != "none"], p[p["norm"] == "none"]
    return {
        "fig1_heatmaps": plots.heatmaps(normalized, checks.collapse, checks.projection,
                                        "Test error heatmaps (normalized networks)"),
        "fig2_collapse": plots.collapse_plot(p),
        "fig7_dead_channels": plots.dead_channels(p),
        "fig3_l2_sensitivity": plots.l2_sensitivity(p, checks.projection),
        "fig4_dynamics": plots.dynamics(results.history, dynamics_cells),
        "fig5_best_over_lr": plots.best_over_lr(p),
        "fig6_control_heatmaps": plots.heatmaps(control, checks.collapse, checks.projection,
                                                "Control: no normalization (norm=none)"),
        "fig8_optimum": plots.optimum(p, checks.optimum),
        "fig9_regimes": plots.regimes(study),
    }


def save_figures(figures: dict, out: Path, dpi: int) -> tuple[list[str], list[str]]:
    """Write PNG and SVG of each figure; return (saved names, warnings for absent ones)."""
    saved, warnings = [], []
    for name, fig in figures.items():
        if fig is None:
            warnings.append(f"{name} not drawn: no trials of the kind it shows")
            continue
        fig.savefig(out / f"{name}.png", dpi=dpi)
        fig.set_layout_engine("none")  # keep the layout just computed: half the drawing time
        fig.savefig(out / f"{name}.svg")
        saved.append(name)
    return saved, warnings


def excluded_table(collapse: pd.DataFrame) -> pd.DataFrame:
    """Per collapse cell, the (lr, l2) points left out by the equilibrium rule."""
    def pairs(points: list) -> str:
        return " ".join(f"{a:.3g}/{b:.3g}" for a, b in points)
    if collapse.empty:
        return pd.DataFrame(columns=["cell", "not equilibrated (lr/l2)", "all seeds diverged"])
    return pd.DataFrame({"cell": collapse["cell"], "n_excluded": collapse["n_excluded"],
                         "not equilibrated (lr/l2)": collapse["excluded"].map(pairs),
                         "n_diverged_points": collapse["n_diverged_points"],
                         "all seeds diverged (lr/l2)": collapse["diverged"].map(pairs)})


def _cols(frame: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    return frame[[c for c in cols if c in frame]] if len(frame) else frame


def regimes_blocks(study: regimes.Study) -> list[Block]:
    """The report's regimes section (only for folders with scale-invariant projection runs)."""
    if study.empty:
        return []
    return [Heading("The three regimes at a fixed effective learning rate (descriptive, no "
                    "verdict)"), Text(regimes.TEXT),
            Text("Boundaries over seeds: lr_median, lr_low..lr_high the range of the per-seed "
                 "boundaries; bracket_low..bracket_high the lr interval that holds every seed's "
                 "boundary (grid resolution included)."),
            Table(study.summary, "regime_boundaries"),
            Table(study.per_seed, "regime_boundaries_per_seed"),
            Text("The same network trained with L2 (update=l2): eff_lr is the window mean of "
                 "lr/||w||^2, geometric mean over conv layers (low/high: the layers' range); "
                 "relaxations: the run's steps over the relaxation time 1/(2*lr*l2); regime: "
                 "its own trajectory's regime by the rule above; rate_regime: the projection "
                 "runs' regime at its effective rate."),
            Table(study.l2_arm, "regime_l2_arm"),
            Table(study.runs, "regime_runs")]


def build_document(results: Results, checks: Checks, verdicts: pd.DataFrame,
                   figure_names: list[str], warnings: list[str],
                   study: regimes.Study | None = None) -> list[Block]:
    """The report's blocks, shared by report.md and report.html."""
    blocks: list[Block] = [
        Text(f"Results: {results.uri}. Used {len(results.trials)} of {results.n_found} trials "
             f"found; skipped {len(results.skipped)}."),
        Text(f"Verdicts under protocol {P.PROTOCOL} (docs/protocol.md)"
             + (f"; EXPLORATION: large l2 set to {checks.settings.large_l2:g}."
                if checks.settings.large_l2 is not None else ".")),
        Heading("Verdicts"), Table(verdicts, "verdicts"),
        Heading("Protocol"), Bullets(tuple(P.wording())),
        Heading("Figures")]
    blocks += [FigureRef(n, f"Figure {FIGURE_NUMBERS[n]}. {FIGURES[n]}") for n in figure_names]
    blocks += [Heading("Collapse statistics (update=l2, l2 > 0)"),
               Table(_cols(checks.collapse, COLLAPSE_COLUMNS), "collapse"),
               Heading("Iso-line test: along and across the theory's diagonals"),
               Table(_cols(checks.collapse, ISO_COLUMNS), "iso_lines"),
               Heading("Collapse of the train loss (mean of the last evaluations)"),
               Table(_cols(checks.collapse_train, COLLAPSE_COLUMNS), "collapse_train"),
               Heading("The best effective learning rate (descriptive, no verdict)"),
               Text("Per iso-line cell: p_star, where a quadratic in log(product) fitted to "
                    "the point means (diverged seeds at chance) is lowest within the design "
                    "(an end when its vertex lies beyond it or the fit has none), its 95% "
                    "bootstrap interval over seeds (deviations rescaled by sqrt(n/(n-1)); "
                    "mc_err_ln_*: Monte Carlo error of each end in ln p), inside: the interval "
                    "lies within the design; best_interior: the best product is not an end "
                    "one; lr_minima_overlap: every lr's own minimum interval shares a point "
                    "(empty when every lr's interval reaches the same design end; "
                    "analysis/optimum.py)."),
               Table(checks.optimum.drop(columns=["per_lr"], errors="ignore"), "optimum"),
               Heading("Per cell: best test error and dead channels (descriptive, no verdict)"),
               Text("best_error: the lowest mean test error over the cell's points (at best_lr,"
                    " best_l2). convN_dead_median: median over the cell's non-diverged points "
                    "of the last epoch's share of conv N's channels that turned less than 1% of"
                    " the layer's angle (figure 7); _used_median: over the points the collapse "
                    "fit uses; _max: the worst point."),
               Table(checks.cells if checks.cells is not None else pd.DataFrame(), "cells"),
               Heading("Points left out of the collapse fits"),
               Table(excluded_table(checks.collapse), "excluded"),
               Heading("Sensitivity: each collapse verdict with the spline's dof one lower and "
                       "one higher"),
               Table(_cols(checks.sensitivity, SENSITIVITY_COLUMNS), "sensitivity"),
               Heading("Projection: l2-sensitivity"),
               Table(_cols(checks.projection, PROJECTION_COLUMNS), "projection"),
               Heading("Equilibrium: norm balance (measured / predicted angular update)^k"),
               Table(_cols(checks.equilibrium_cells, EQUILIBRIUM_COLUMNS), "equilibrium"),
               Table(checks.equilibrium.drop(columns=["setting"], errors="ignore"),
                     "equilibrium_points"),
               Heading("The family of tests: raw and Holm-adjusted p-values (edge factor 1)"),
               Table(checks.family, "family"),
               *(regimes_blocks(study) if study is not None else []),
               Heading("Skipped trials"),
               Table(pd.DataFrame(results.skipped, columns=["trial_id", "kind", "reason"]),
                     "skipped"),
               Heading("Warnings"), Bullets(tuple(warnings) or ("none",))]
    return blocks


def print_verdicts(verdicts: pd.DataFrame, file=None) -> None:
    """The short terminal table."""
    file = file or sys.stdout
    width = max([len(c) for c in verdicts["cell"]] + [4])
    print(f"{'check':<12} {'cell':<{width}} {'expect':<7} {'verdict':<12} summary", file=file)
    for r in verdicts.itertuples():
        why = "" if r.verdict == "PASS" else f" | {r.reason}"
        print(f"{r.check:<12} {r.cell:<{width}} {r.expected:<7} {r.verdict:<12} {r.summary}{why}",
              file=file)


def write_report(results: Results, out: Path, settings: CheckSettings,
                 dynamics: list[dict], max_dynamics: int, dpi: int,
                 figures: bool = True) -> tuple[Checks, pd.DataFrame, list[str]]:
    """Run the checks and write every output into `out`; return checks, verdicts, warnings."""
    out.mkdir(parents=True, exist_ok=True)
    checks = run_checks(results, settings)
    verdicts = verdict_table(checks)
    cells, warnings = choose_dynamics(checks.points, dynamics, max_dynamics)
    warnings = results.warnings + missing_points(checks.points) + warnings
    study = regimes.study(results.trials, results.history)
    names: list[str] = []
    if figures:
        names, absent = save_figures(make_figures(results, checks, cells, study), out, dpi)
        warnings += absent
    (out / "collapse.json").write_text(to_json(checks, results) + "\n")
    if not study.empty:
        (out / "regimes.json").write_text(json.dumps(regimes.to_dict(study), indent=1) + "\n")
    to_csv_frame(checks).to_csv(out / "collapse.csv", index=False)
    blocks = build_document(results, checks, verdicts, names, warnings, study)
    title = "l2bn: L2 regularization versus normalization: report"
    (out / "report.md").write_text(to_markdown(title, blocks))
    (out / "report.html").write_text(to_html(title, blocks, out))
    return checks, verdicts, warnings


def build_parser() -> argparse.ArgumentParser:
    """Command-line options (all documented in --help)."""
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", required=True,
                        help="the sweep's results: <storage>/<name>, a local path or URI "
                             "(s3://, gs://, file://) holding history/ and trials/")
    parser.add_argument("--out", help="output folder (local); default <results>/report for "
                                      "a local path, ./report for a URI")
    parser.add_argument("--large-l2", type=float, default=None,
                        help="exploration: l2 above this is the projection check's large-l2 "
                             "regime (default: from the measured gradient norm, docs/protocol.md)")
    parser.add_argument("--dynamics", action="append", type=parse_cell, default=[],
                        metavar="CELL", help="a point for figure 4, e.g. "
                        "'optimizer=sgd,norm=batch,update=l2,lr=0.1,l2=5e-4' (repeatable; "
                        "default: the best equilibrated point per optimizer)")
    parser.add_argument("--max-dynamics", type=int, default=4,
                        help="at most this many points in figure 4 (default 4)")
    parser.add_argument("--dpi", type=int, default=100, help="PNG resolution (default 100)")
    parser.add_argument("--no-figures", action="store_true",
                        help="only the checks, tables and reports (no figures)")
    return parser


def default_out(results: str) -> Path:
    """<results>/report for a local path, ./report for a URI."""
    return Path("report") if "://" in results else Path(results) / "report"


def main(argv: list[str] | None = None) -> int:
    """Load, check, render, print the verdicts; exit 2 with a one-line error if unusable."""
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        results = load_results(args.results)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = CheckSettings(large_l2=args.large_l2)
    out = Path(args.out) if args.out else default_out(args.results)
    _, verdicts, warnings = write_report(results, out, settings, args.dynamics,
                                         args.max_dynamics, args.dpi, not args.no_figures)
    for trial_id, _, reason in results.skipped:
        print(f"warning: skipped trial {trial_id}: {reason}", file=sys.stderr)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    sys.stderr.flush()
    print(f"used {len(results.trials)} of {results.n_found} trials; "
          f"skipped {len(results.skipped)}")
    print_verdicts(verdicts)
    figures = "" if args.no_figures else " and the figures (PNG, SVG)"
    print(f"wrote {out}/report.html, report.md, collapse.csv, collapse.json{figures} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

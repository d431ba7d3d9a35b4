"""Run protocol 5's checks on a results folder (analysis/protocol.py, analysis/checks/).

- collapse (update=l2, l2 > 0): is the outcome a function of log(lr) + s*log(l2) with the
  theory's s? On the test error (with the iso-line test beside it) and on the train loss.
- projection (update=projection): is test error flat in l2 below the large-l2 regime?
- equilibrium (update=l2, normalized, l2 > 0): the norm balance of the used points.
Every check that uses the premise's points runs once per edge factor; each variant's p-values
are Holm-adjusted as one family, and a verdict stands only when all variants agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from l2bn import theory
from l2bn.schema import CONV_LAYERS, layer_column, layer_columns

from . import protocol as P
from .checks import balance, isolines, premise, projection, slope
from .checks.inference import holm
from .checks.premise import CHANCE_ERROR, EDGE_FACTORS
from .equilibrium import last_epoch_drifts
from .load import Results
from .optimum import optimum_table
from .outcome import last_evals

POINT_KEYS = ["cell", "optimizer", "norm", "update", "setting", "lr", "l2"]
CELL_KEYS = POINT_KEYS[:5]
DEAD_COLUMNS = layer_columns("dead_fraction", CONV_LAYERS)  # last epoch, l2bn/metrics.py
NOMINAL = EDGE_FACTORS.index(1.0)
VERDICT_KEYS = {"collapse": "verdict", "collapse_train": "verdict", "iso_lines": "iso_verdict",
                "projection": "verdict", "equilibrium": "verdict"}


@dataclass(frozen=True)
class CheckSettings:
    """Knobs of the report that are not rules; a set `large_l2` is an exploration, flagged as
    such in the report."""

    large_l2: float | None = None  # None: from the measured gradient norm (projection.TEXT)


@dataclass
class Checks:
    """Per-point table, the check tables, and the family of tests behind them."""

    points: pd.DataFrame
    collapse: pd.DataFrame  # test error, with the iso-line test's columns
    collapse_train: pd.DataFrame
    projection: pd.DataFrame
    equilibrium: pd.DataFrame  # per point
    equilibrium_cells: pd.DataFrame
    settings: CheckSettings
    sensitivity: pd.DataFrame  # each collapse cell's verdict per edge factor and spline dof
    cells: pd.DataFrame  # per cell: best error and dead-channel fractions (descriptive)
    family: pd.DataFrame  # every p-value of the nominal variant, raw and Holm-adjusted
    optimum: pd.DataFrame  # per iso-line cell: the best effective learning rate (descriptive)


def point_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, lr, l2): error_mean (diverged seeds at chance, for plots), errors
    and fit_mean (non-diverged seeds only, for fits), divergence, drifts and the premise's
    nominal `equilibrated` flag. `trials` carries norm_drift and angle_drift per trial."""
    t = trials.copy()
    ratios = layer_columns("ang_ratio", CONV_LAYERS)
    for layer, col in zip(CONV_LAYERS, ratios, strict=True):
        measured = t.get(layer_column(layer, "angular_update"), pd.Series(np.nan, t.index)).astype(float)
        pred = t.get(layer_column(layer, "pred_angular_update"), pd.Series(np.nan, t.index)).astype(float)
        t[col] = (measured / pred).where(~t["diverged_final"])
    k = np.array([theory.balance_exponent(o) for o in t["optimizer"]], dtype=float)
    t["balance"] = (t[ratios].astype(float) ** k[:, None]).mean(axis=1)
    for col in ("norm_drift", "angle_drift", *DEAD_COLUMNS):
        t[col] = t.get(col, pd.Series(np.nan, t.index)).astype(float).where(~t["diverged_final"])
    t["test_fit"] = t["error_plot"].where(~t["diverged_final"])  # for the chance guard
    grad = [c for c in layer_columns("grad_norm_unit", CONV_LAYERS) if c in t]
    t["grad_norm_conv"] = t[grad].astype(float).mean(axis=1) if grad else np.nan
    g = t.groupby(POINT_KEYS, sort=True)
    points = g.agg(error_mean=("error_plot", "mean"), n_seeds=("error_plot", "size"),
                   n_diverged=("diverged_final", "sum"), budget_steps=("budget_steps", "max"),
                   relax_steps=("relax_steps", "median"), eff_lr_proxy=("eff_lr_proxy", "first"),
                   grad_norm_conv=("grad_norm_conv", "median"),
                   norm_drift=("norm_drift", "median"), angle_drift=("angle_drift", "median"),
                   balance=("balance", "mean"), test_mean=("test_fit", "mean"),
                   **{c: (c, "mean") for c in ratios + DEAD_COLUMNS}).reset_index()
    points = with_seed_outcomes(points, t, "error_plot")
    points["trial_ids"] = list(g["trial_id"].agg(list))
    points["all_diverged"] = points["n_diverged"] == points["n_seeds"]
    points["ang_ratio"] = points[ratios].mean(axis=1)
    points["equilibrated"] = premise.equilibrated(points) & ~points["all_diverged"]
    points["forecast_ready"] = premise.forecast_ready(points)
    return points


def with_seed_outcomes(points: pd.DataFrame, trials: pd.DataFrame, column: str) -> pd.DataFrame:
    """points with errors (each point's non-diverged seeds' `column`), their fit_mean and
    error_sd: what the fits use, so one point table serves the test and the train outcome."""
    ok = trials[~trials["diverged_final"]].groupby(POINT_KEYS, sort=True)[column].agg(list)
    errors = [np.asarray(ok.get(k, []), float)
              for k in points[POINT_KEYS].itertuples(index=False, name=None)]
    return points.assign(errors=errors,
                         fit_mean=[e.mean() if len(e) else np.nan for e in errors],
                         error_sd=[e.std(ddof=1) if len(e) > 1 else np.nan for e in errors])


def cell_info(p: pd.DataFrame) -> dict:
    """The keys, role and expectation of a cell (norm=none is the control: FAIL expected)."""
    first = p.iloc[0]
    return {k: first[k] for k in CELL_KEYS} | {
        "role": "control" if first["norm"] == "none" else "test",
        "expected": "FAIL" if first["norm"] == "none" else "PASS"}


def slope_row(cell_points: pd.DataFrame, factor: float, with_iso: bool,
              dof_shift: int = 0) -> dict:
    """Raw statistics of one collapse cell under an edge factor (no verdict yet)."""
    p = cell_points[cell_points["l2"] > 0]
    s_theory = theory.iso_slope(p.iloc[0]["optimizer"])
    pre = premise.premise(cell_points, factor)
    dof = max(2, slope.design_dof(np.log(p["lr"].to_numpy(float)), np.log(p["l2"].to_numpy(float)))
              + dof_shift)
    excluded = p[~p.index.isin(pre.used.index) & ~p["all_diverged"]]
    diverged = p[p["all_diverged"]]
    row = cell_info(p) | {
        "s_theory": s_theory, "factor": factor, "dof": dof, "n_points": len(pre.used),
        "n_ready": len(pre.ready), "n_excluded": len(excluded), "n_lr": pre.used["lr"].nunique(),
        "n_l2": pre.used["l2"].nunique(), "n_diverged_points": len(diverged),
        "n_seeds_median": float(pre.used["n_seeds"].median()) if len(pre.used) else 0.0,
        "excluded": [[float(a), float(b)] for a, b in zip(excluded["lr"], excluded["l2"], strict=True)],
        "diverged": [[float(a), float(b)] for a, b in zip(diverged["lr"], diverged["l2"], strict=True)]}
    if pre.verdict is not None:
        row |= {"premise": pre.verdict, "stop": pre.verdict, "stop_reason": pre.reason}
        if pre.verdict == premise.NOT_EQUILIBRATED:  # the descriptive slope on the ready points
            row |= _fit(pre.ready, dof, s_theory, descriptive=True)
        return row
    if len(pre.used) < dof + 2:
        row |= {"stop": "INSUFFICIENT", "stop_reason": f"{len(pre.used)} used points for a "
                f"spline of {dof} coefficients + s: need >= {dof + 2}"}
    else:
        row |= _fit(pre.used, dof, s_theory)
    return row | (isolines.measure(pre.used, s_theory) if with_iso else {})


def _fit(used: pd.DataFrame, dof: int, s_theory: float, descriptive: bool = False) -> dict:
    """The slope fit's columns; a descriptive fit keeps its p-values out of the family."""
    fit = slope.fit_slope(used["lr"].to_numpy(float), used["l2"].to_numpy(float),
                          list(used["errors"]), dof, s_theory)
    if fit is None:
        return {"stop": "INSUFFICIENT", "stop_reason": "outcome constant over the used points"}
    out = {k: v for k, v in fit.__dict__.items() if k != "dof"}
    if descriptive:
        return {k: v for k, v in out.items() if not k.endswith("_p") and "_p_" not in k}
    if not np.isfinite(fit.noise_var):
        return out | {"stop": "DESCRIPTIVE", "stop_reason": "one seed per point: no seed "
                      "noise to test against"}
    return out


def projection_row(cell_points: pd.DataFrame, settings: CheckSettings) -> dict:
    """Raw statistics of one update=projection cell (no verdict yet)."""
    threshold = large_l2_threshold(cell_points, settings)
    p = cell_points[(cell_points["l2"] <= threshold) & (cell_points["l2"] > 0)
                    & cell_points["fit_mean"].notna()]
    row = cell_info(cell_points) | {
        "large_l2": threshold, "n_points": len(p),
        "n_large_l2": int((cell_points["l2"] > threshold).sum()),
        "n_diverged_points": int(cell_points["all_diverged"].sum()),
        "n_lr": p["lr"].nunique(), "n_l2": p["l2"].nunique()}
    if row["n_lr"] < 2 or row["n_l2"] < 2:
        return row | {"l2_stop": f"{row['n_lr']} lr x {row['n_l2']} l2 values below the "
                      "large-l2 regime"}
    return row | projection.measure(p)


def large_l2_threshold(cell_points: pd.DataFrame, settings: CheckSettings) -> float:
    """l2 above this is the large-l2 regime (projection.TEXT); inf when unknown."""
    if settings.large_l2 is not None:
        return settings.large_l2
    grad = cell_points["grad_norm_conv"].median()
    return float(grad) / 2 if np.isfinite(grad) else np.inf


def balance_row(cell_points: pd.DataFrame, factor: float) -> dict:
    """The equilibrium balance of one cell under an edge factor, with its verdict."""
    pre = premise.premise(cell_points, factor)
    row = cell_info(cell_points) | {"role": "test", "expected": "PASS", "factor": factor,
                                    "balance_exponent": theory.balance_exponent(
                                        cell_points.iloc[0]["optimizer"])}
    row |= balance.measure(pre.used if pre.verdict is None else pre.ready)
    if pre.verdict is not None:
        return row | {"verdict": pre.verdict, "reason": pre.reason}
    verdict, reason = balance.decide(row)
    return row | {"verdict": verdict, "reason": reason}


def judge_variant(tables: dict[str, list[dict]]) -> pd.DataFrame:
    """Holm-adjust one variant's family in place, decide each row; return the family."""
    family = [(table, i, key) for table, keys in P.FAMILY.items()
              for i, row in enumerate(tables.get(table, [])) for key in keys
              if np.isfinite(row.get(key, np.nan))]
    adjusted = holm([tables[t][i][k] for t, i, k in family])
    for (t, i, k), a in zip(family, adjusted, strict=True):
        tables[t][i][k + "_adj"] = a
    for table in ("collapse", "collapse_train"):
        for row in tables.get(table, []):
            row["verdict"], row["reason"] = decide_slope(row)
            if table == "collapse":  # the premise stops the iso-line test too
                row["iso_verdict"], row["iso_reason"] = (
                    (row["premise"], row["stop_reason"]) if "premise" in row
                    else isolines.decide(_with_adj(row, P.FAMILY["collapse"])))
    for row in tables.get("projection", []):
        row["verdict"], row["reason"] = projection.decide(_with_adj(row, P.FAMILY["projection"]))
    return pd.DataFrame([{"table": t, "cell": tables[t][i]["cell"], "test": k,
                          "p": tables[t][i][k], "p_adj": a}
                         for (t, i, k), a in zip(family, adjusted, strict=True)])


def _with_adj(row: dict, keys: tuple[str, ...]) -> dict:
    """row with NaN for every adjusted p-value it lacks."""
    return {k + "_adj": np.nan for k in keys} | row


def decide_slope(row: dict) -> tuple[str, str]:
    """A collapse row's verdict: the premise's or the fit's stop, else slope.decide."""
    if "stop" in row:
        reason = row["stop_reason"]
        if row["stop"] == premise.NOT_EQUILIBRATED and np.isfinite(row.get("s", np.nan)):
            reason += (f"; descriptive slope on them s = {row['s']:.3f} [{row['ci_low']:.3f}, "
                       f"{row['ci_high']:.3f}] (theory {row['s_theory']:g})")
        return row["stop"], reason
    return slope.decide(_with_adj(row, P.FAMILY["collapse"]))


def robust(variants: list[dict]) -> tuple[str, str]:
    """The verdict all edge variants agree on, else INSUFFICIENT (not robust)."""
    verdicts = [v["verdict"] for v in variants]
    nominal = variants[NOMINAL]
    if len(set(verdicts)) == 1:
        return nominal["verdict"], nominal["reason"]
    shown = ", ".join(f"{v} at x{f:.3g}" for v, f in zip(verdicts, EDGE_FACTORS, strict=True))
    return "INSUFFICIENT", (f"not robust to the equilibrium filter's edge ({shown}); as stated: "
                            f"{nominal['reason']}")


def judged_trials(results: Results) -> pd.DataFrame:
    """The results' trials with their last-epoch drifts and the protocol's outcome columns."""
    trials = results.trials.drop(columns=["norm_drift", "angle_drift"], errors="ignore")
    trials = trials.merge(last_epoch_drifts(results.history), on="trial_id", how="left")
    return with_outcome(trials, results.history, P.OUTCOME_EVALS)


def run_checks(results: Results, settings: CheckSettings = CheckSettings(),
               sensitivity: bool = True) -> Checks:
    """Every check of protocol 5 on the results' trials (and the sensitivity table unless
    `sensitivity` is False)."""
    trials = judged_trials(results)
    points = point_table(trials)
    train_points = with_seed_outcomes(points, trials, "train_outcome")
    cells = {c: p for c, p in points.groupby("cell", sort=True)}
    l2_cells = [c for c, p in cells.items() if p.iloc[0]["update"] == "l2" and (p["l2"] > 0).any()]
    proj_cells = [c for c, p in cells.items() if p.iloc[0]["update"] == "projection"]
    eq_cells = [c for c in l2_cells if cells[c].iloc[0]["norm"] != "none"]
    train_cells = {c: p for c, p in train_points.groupby("cell", sort=True)}
    projections = [projection_row(cells[c], settings) for c in proj_cells]  # no premise
    variants, families = [], []
    for factor in EDGE_FACTORS:
        tables = {"collapse": [slope_row(cells[c], factor, True) for c in l2_cells],
                  "collapse_train": [slope_row(train_cells[c], factor, False) for c in l2_cells],
                  "projection": [dict(r) for r in projections]}
        families.append(judge_variant(tables))
        tables["equilibrium"] = [balance_row(cells[c], factor) for c in eq_cells]
        variants.append(tables)
    final = {name: combine([v[name] for v in variants], name)
             for name in ("collapse", "collapse_train", "projection", "equilibrium")}
    sens = (sensitivity_table(cells, train_cells, l2_cells, variants[NOMINAL])
            if sensitivity else pd.DataFrame())
    eq_points = points[points["cell"].isin(eq_cells) & points["equilibrated"]
                       & points["balance"].notna()]
    eq_points = eq_points[POINT_KEYS + layer_columns("ang_ratio", CONV_LAYERS)
                          + ["ang_ratio", "balance", "norm_drift", "angle_drift", "n_seeds"]]
    return Checks(points, final["collapse"], final["collapse_train"], final["projection"],
                  eq_points.reset_index(drop=True), final["equilibrium"], settings, sens,
                  cell_table(points), families[NOMINAL], optimum_table(points))


def combine(per_variant: list[list[dict]], name: str) -> pd.DataFrame:
    """The nominal variant's rows with every verdict replaced by its robust one and each
    variant's verdict beside it."""
    rows = []
    for i, nominal in enumerate(per_variant[NOMINAL]):
        row = dict(nominal)
        keys = [("verdict", "reason")] + ([("iso_verdict", "iso_reason")] if name == "collapse" else [])
        for vkey, rkey in keys:
            vs = [{"verdict": v[i][vkey], "reason": v[i][rkey]} for v in per_variant]
            row[vkey], row[rkey] = robust(vs)
            row[f"{vkey}_by_edge"] = [v["verdict"] for v in vs]
        row.pop("factor", None)
        rows.append(row)
    return pd.DataFrame(rows)


def sensitivity_table(cells: dict, train_cells: dict, l2_cells: list[str],
                      nominal: dict[str, list[dict]]) -> pd.DataFrame:
    """Per collapse cell: the verdict with the spline's dof as designed, one lower and one
    higher (the nominal family, this cell's p-values replaced); the verdict under each edge
    factor is the rows' verdict_by_edge."""
    rows = []
    for i, cell in enumerate(l2_cells):
        for name, source in (("collapse", cells), ("collapse_train", train_cells)):
            for shift in (-1, 1):
                tables = {k: [dict(r) for r in v] for k, v in nominal.items() if k in P.FAMILY}
                tables[name][i] = slope_row(source[cell], 1.0, name == "collapse", shift)
                judge_variant(tables)
                r = tables[name][i]
                rows.append(_sens(cell, name, f"dof {shift:+d}", r))
            rows.append(_sens(cell, name, "dof as designed", nominal[name][i]))
    return pd.DataFrame(rows)


def _sens(cell: str, check: str, variant: str, r: dict) -> dict:
    return {"cell": cell, "check": check, "variant": variant, "dof": r.get("dof"),
            **{k: r.get(k, np.nan) for k in ("n_points", "s", "ci_low", "ci_high", "lof_p",
                                             "verdict")}}


def cell_table(points: pd.DataFrame) -> pd.DataFrame:
    """Per cell, descriptive (no verdict): the best point's mean test error, and each conv
    layer's dead-channel fraction at the last epoch, median over the cell's non-diverged
    points and over the points the premise uses (nominal thresholds)."""
    rows = []
    for _cell, p in points.groupby("cell", sort=True):
        ok = p[p["fit_mean"].notna()]
        used = ok[ok["equilibrated"] & (ok["l2"] > 0)]
        best = ok.nsmallest(1, "fit_mean")  # empty when every point diverged: NaN below
        row = {k: p.iloc[0][k] for k in CELL_KEYS} | {
            "n_points": len(p), "n_used": len(used),
            "best_error": best["fit_mean"].max(), "best_lr": best["lr"].max(),
            "best_l2": best["l2"].max()}
        for layer, col in zip(CONV_LAYERS, DEAD_COLUMNS, strict=True):  # empty column: NaN
            row |= {layer_column(layer, "dead_median"): ok[col].median(),
                    layer_column(layer, "dead_used_median"): used[col].median(),
                    layer_column(layer, "dead_max"): ok[col].max()}
        rows.append(row)
    return pd.DataFrame(rows)


def missing_points(points: pd.DataFrame) -> list[str]:
    """Warnings naming the (lr, l2) grid points absent from each cell's lr x l2 product (not
    for an iso-line design, whose points are not meant to fill the rectangle)."""
    out = []
    for cell, p in points.groupby("cell", sort=True):
        if is_iso_design(p):
            continue
        have = set(zip(p["lr"], p["l2"], strict=True))
        grid = {(a, b) for a in p["lr"].unique() for b in p["l2"].unique()}
        gone = sorted(grid - have)
        if gone:
            names = ", ".join(f"(lr={a:.3g}, l2={b:.3g})" for a, b in gone[:8])
            more = f" and {len(gone) - 8} more" if len(gone) > 8 else ""
            out.append(f"{cell}: {len(gone)} of {len(grid)} (lr, l2) grid points have no usable"
                       f" trial: {names}{more}")
    return out


def is_iso_design(p: pd.DataFrame) -> bool:
    """Every point of the cell lies on a diagonal lr^(1/s)*l2 = const with other lr values."""
    lr, l2 = p["lr"].to_numpy(float), p["l2"].to_numpy(float)
    if len(p) < 2 or (l2 <= 0).any():
        return False
    ids = isolines.diagonal_ids(lr, l2, theory.iso_slope(p.iloc[0]["optimizer"]))
    return bool((pd.Series(lr).groupby(ids).nunique() >= 2).all())


def with_outcome(trials: pd.DataFrame, history: pd.DataFrame, k: int) -> pd.DataFrame:
    """Trials judged on the mean of their last k evaluations (outcome.last_evals): error_plot
    from the test error (chance for a diverged trial), train_outcome from the train loss; a
    trial without usable history keeps its final row's values."""
    t = trials.drop(columns=["test_outcome", "train_outcome", "n_evals"], errors="ignore")
    t = t.merge(last_evals(history, k), on="trial_id", how="left")
    test = t["test_outcome"].fillna(t["test_error"].astype(float))
    t["train_outcome"] = t["train_outcome"].fillna(t["train_loss"].astype(float))
    t["error_plot"] = np.where(t["diverged_final"], CHANCE_ERROR, test)
    return t


def collapse_summary(r: dict, singles: bool) -> str:
    """'9 pts, dof 3; s=... [...] vs theory 1; lack-of-fit p ...; adj R^2 1-D ...'."""
    summary = f"{r['n_points']} pts, dof {r.get('dof')}"
    if not np.isfinite(r.get("s", np.nan)):
        return summary
    summary += (f"; s={r['s']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] vs theory "
                f"{r['s_theory']:g}; lack-of-fit p {r.get('lof_p', np.nan):.3g}; adj R^2 1-D "
                f"{r['r2adj_1d']:.3f}")
    return summary + (f", lr-only {r['r2adj_lr']:.3f}, l2-only {r['r2adj_l2']:.3f}" if singles else "")


def verdict_table(checks: Checks) -> pd.DataFrame:
    """One row per verdict: check, cell, role, expected, verdict, summary, reason."""
    rows = []
    for r in checks.collapse.to_dict("records"):
        rows.append(("collapse", r, collapse_summary(r, singles=True)))
    for r in checks.collapse_train.to_dict("records"):
        rows.append(("collapse_train", r, collapse_summary(r, singles=False)))
    for r in checks.collapse.to_dict("records"):
        summary = f"{r.get('n_diagonals', 0) or 0:.0f} diagonals, {r.get('n_iso_points', 0) or 0:.0f} pts"
        if np.isfinite(r.get("iso_along", np.nan)):
            summary += (f"; along {r['iso_along']:+.4f} [{r['iso_along_low']:+.4f}, "
                        f"{r['iso_along_high']:+.4f}], across p {r['iso_across_p']:.3g}")
        rows.append(("iso_lines", r | {"verdict": r["iso_verdict"], "reason": r["iso_reason"]},
                     summary))
    for r in checks.projection.to_dict("records"):
        summary = f"{r['n_points']} pts"
        if np.isfinite(r.get("l2_effect", np.nan)):
            summary += (f"; l2 effect {r['l2_effect']:+.4f} [{r['l2_effect_low']:+.4f}, "
                        f"{r['l2_effect_high']:+.4f}], lr effect p {r['lr_p']:.3g}")
        rows.append(("projection", r, summary))
    for r in checks.equilibrium_cells.to_dict("records"):
        summary = f"{r['n_points']} pts"
        if np.isfinite(r.get("balance_median", np.nan)):
            summary += (f"; norm balance median {r['balance_median']:.3f} (angle ratio median "
                        f"{r['ratio_median']:.3f}, ^{r['balance_exponent']})")
        rows.append(("equilibrium", r, summary))
    return pd.DataFrame([{"check": c, "cell": r["cell"], "role": r["role"],
                          "expected": r["expected"], "verdict": r["verdict"], "summary": s,
                          "reason": r["reason"]} for c, r, s in rows],
                        columns=["check", "cell", "role", "expected", "verdict", "summary",
                                 "reason"])

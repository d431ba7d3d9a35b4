"""The quantitative checks of docs/theory.md (iso-lines, projection, equilibrium) on
per-point mean test errors.

- collapse (update=l2, l2 > 0): is test error a function of log(lr) + s*log(l2) with the
  theory's s (1 for sgd/momentum/adamw, 1/2 for adam)? norm=none is the control.
- projection (update=projection): is test error flat in l2 below the large-l2 regime?
- equilibrium (update=l2, normalized, l2 > 0): measured angular update over the theory's
  equilibrium value, at the last epoch, for points that had time to reach equilibrium.
All thresholds live here, and rules() states them in words for the report.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from l2bn import theory
from l2bn.schema import CONV_LAYERS

from .fit import CI_LEVEL, MAX_DOF, POINTS_PER_DOF, S_GRID, adjusted_r2, fit_slope
from .load import CHANCE_ERROR, Results

MIN_POINTS = 6  # fewer equilibrated points than this: INSUFFICIENT
MIN_DISTINCT = 3  # ... or fewer distinct lr or l2 values than this
R2_MIN = 0.5  # the 1-D model's adjusted R^2 must reach this
GAIN_MIN = 0.5  # ... and remove this fraction of the variance the best one-variable model leaves
# The two theories' slopes (adam with coupled L2; sgd, momentum, adamw): an interval holding
# both cannot tell them apart.
CANDIDATE_SLOPES = (0.5, 1.0)
FLAT_MAX = 0.3  # projection: spread across l2 / spread across lr at most this
EQ_RATIO = (2 / 3, 3 / 2)  # equilibrium: median measured/predicted angular update in this range
POINT_KEYS = ["cell", "optimizer", "norm", "update", "setting", "lr", "l2"]
CELL_KEYS = POINT_KEYS[:5]


@dataclass(frozen=True)
class CheckSettings:
    """Knobs of the checks (the report's command-line options)."""

    n_boot: int = 200
    seed: int = 0
    relax_factor: float = 1.0
    large_l2: float | None = None  # None: from the measured gradient norm (see rules())
    s_tolerance: float = 0.05  # slack around the interval when comparing with the theory's s


@dataclass
class Checks:
    """Per-point table and the three check tables."""

    points: pd.DataFrame
    collapse: pd.DataFrame
    projection: pd.DataFrame
    equilibrium: pd.DataFrame  # per point
    equilibrium_cells: pd.DataFrame  # per cell summary with verdict
    settings: CheckSettings


def rules(settings: CheckSettings) -> list[str]:
    """The rules and thresholds of every verdict, in words."""
    return [
        f"Diverged trials are drawn (red x, hatched) at test error {CHANCE_ERROR} (chance) and"
        " count as such for best-over-lr, but are left out of every fit and spread: divergence"
        " happens early, before any equilibrium, so the theory says nothing about it. A point"
        " with some seeds diverged uses its other seeds; one with all seeds diverged is listed"
        " as such. Failed and unfinished trials are left out (listed under Skipped).",
        f"Equilibrium rule: a point (lr, l2 > 0) is used in the collapse fit when "
        f"{settings.relax_factor:g} x relaxation_steps <= the training budget in steps "
        "(theory.relaxation_steps: (1 - momentum)/(lr * 2*l2) for the SGD family and adamw; for"
        " adam from each conv layer's fan-in and measured unit gradient norm at the last "
        "epoch, the slowest layer counting; median over seeds. Budget = steps_per_epoch x "
        "epochs). Diverged points have no measured gradient norm under adam: not equilibrated.",
        "Collapse fit: for each s in [-1, 3] (step 0.01, then parabolic refinement), a cubic "
        f"regression spline (up to {MAX_DOF} coefficients, at most one per {POINTS_PER_DOF} "
        "points and fewer than the distinct x values) in x = log(lr) + s*log(l2) is fitted to"
        " the per-point mean test "
        "error; s maximises R^2. The lr-only and l2-only models are the same spline in log(lr)"
        " or log(l2).",
        f"Interval: {100 * CI_LEVEL:g}% percentile bootstrap ({settings.n_boot} replicates, "
        f"RNG seed {settings.seed}). 'seeds': each point's seeds are redrawn from the cell's "
        "pooled within-point deviations (scaled by sqrt(k/(k-1))) around the point's mean; "
        "'residuals' (when the median point has a single seed): the fitted 1-D model plus "
        "its resampled residuals. The 'bootstrap' column says which.",
        "Variance explained: adjusted R^2 = 1 - (1 - R^2)(n - 1)/(n - k), k = the model's "
        "coefficients (+1 for s in the 1-D model); gain = (R^2_1D - R^2_best single)/"
        "(1 - R^2_best single), the share of the best one-variable model's unexplained "
        "variance that the 1-D model explains.",
        f"Collapse verdict: INSUFFICIENT with fewer than {MIN_POINTS} equilibrated points or "
        f"fewer than {MIN_DISTINCT} distinct lr or l2 values; PASS when the theory's s lies in "
        f"the interval widened by {settings.s_tolerance:g} on each side (the interval shrinks"
        " to nothing with many seeds, while the theory is an equilibrium approximation), "
        f"adjusted R^2_1D >= {R2_MIN} and gain >= {GAIN_MIN}; FAIL when either R^2 criterion"
        " fails or the widened interval misses the theory's s; INSUFFICIENT (instead of PASS "
        "or the s-only FAIL) when the widened interval holds both s = 1/2 and s = 1, i.e. "
        "cannot tell the two theories apart. "
        "norm=none is the control: FAIL is the expected outcome there.",
        f"Projection flatness: among l2 below the large-l2 regime, ratio = (mean over lr of "
        f"the std of error across l2) / (mean over l2 of the std across lr); PASS when ratio "
        f"<= {FLAT_MAX}, INSUFFICIENT with fewer than 2 distinct lr or l2 values. Large l2: "
        + (f"l2 > {settings.large_l2:g} (set by --large-l2)." if settings.large_l2 is not None
           else "2*l2 above the median measured per-unit gradient norm at unit weight norm "
                "(conv layers, last epoch), i.e. the L2 gradient outweighs the loss gradient."),
        f"Equilibrium angular update: for equilibrated, non-diverged points, the ratio of "
        "measured (last epoch, mean over the epoch's steps) to predicted equilibrium angular "
        "update per conv layer, averaged over conv layers and seeds; per cell PASS when the "
        f"median ratio lies in [{EQ_RATIO[0]:.3g}, {EQ_RATIO[1]:.3g}].",
    ]


def point_table(trials: pd.DataFrame, relax_factor: float) -> pd.DataFrame:
    """One row per (cell, lr, l2): error_mean (diverged seeds at chance, for plots), errors
    and fit_mean (non-diverged seeds only, for fits), divergence and equilibrium."""
    t = trials.copy()
    ratios = [f"{layer}_ang_ratio" for layer in CONV_LAYERS]
    for layer, col in zip(CONV_LAYERS, ratios, strict=True):
        measured = t.get(f"{layer}_angular_update", pd.Series(np.nan, t.index)).astype(float)
        pred = t.get(f"{layer}_pred_angular_update", pd.Series(np.nan, t.index)).astype(float)
        t[col] = (measured / pred).where(~t["diverged_final"])
    grad = [c for c in (f"{layer}_grad_norm_unit" for layer in CONV_LAYERS) if c in t]
    t["grad_norm_conv"] = t[grad].astype(float).mean(axis=1) if grad else np.nan
    g = t.groupby(POINT_KEYS, sort=True)
    points = g.agg(error_mean=("error_plot", "mean"), n_seeds=("error_plot", "size"),
                   n_diverged=("diverged_final", "sum"), budget_steps=("budget_steps", "max"),
                   relax_steps=("relax_steps", "median"), eff_lr_proxy=("eff_lr_proxy", "first"),
                   grad_norm_conv=("grad_norm_conv", "median"),
                   **{c: (c, "mean") for c in ratios}).reset_index()
    ok = t[~t["diverged_final"]].groupby(POINT_KEYS, sort=True)["error_plot"].agg(list)
    points["errors"] = [np.asarray(ok.get(k, []), float)
                        for k in points[POINT_KEYS].itertuples(index=False, name=None)]
    points["fit_mean"] = [e.mean() if len(e) else np.nan for e in points["errors"]]
    points["trial_ids"] = list(g["trial_id"].agg(list))
    points["error_sd"] = [e.std(ddof=1) if len(e) > 1 else np.nan for e in points["errors"]]
    points["all_diverged"] = points["n_diverged"] == points["n_seeds"]
    points["equilibrated"] = (points["l2"] > 0) & (
        relax_factor * points["relax_steps"].where(points["l2"] > 0, 0) <= points["budget_steps"])
    points["ang_ratio"] = points[ratios].mean(axis=1)
    return points


def missing_points(points: pd.DataFrame) -> list[str]:
    """Warnings naming the (lr, l2) grid points absent from each cell's lr x l2 product."""
    out = []
    for cell, p in points.groupby("cell", sort=True):
        have = set(zip(p["lr"], p["l2"], strict=True))
        grid = {(a, b) for a in p["lr"].unique() for b in p["l2"].unique()}
        gone = sorted(grid - have)
        if gone:
            names = ", ".join(f"(lr={a:.3g}, l2={b:.3g})" for a, b in gone[:8])
            more = f" and {len(gone) - 8} more" if len(gone) > 8 else ""
            out.append(f"{cell}: {len(gone)} of {len(grid)} (lr, l2) grid points have no usable"
                       f" trial: {names}{more}")
    return out


def cell_rng(settings: CheckSettings, cell: str) -> np.random.Generator:
    """A generator that depends only on the RNG seed and the cell, so results are stable."""
    return np.random.default_rng([settings.seed, zlib.crc32(cell.encode())])


def collapse_row(cell_points: pd.DataFrame, settings: CheckSettings) -> dict:
    """The collapse statistics and verdict of one (optimizer, norm, update=l2) cell."""
    first = cell_points.iloc[0]
    p = cell_points[cell_points["l2"] > 0]
    eq = p[p["equilibrated"]]
    used, excluded, diverged = eq[~eq["all_diverged"]], p[~p["equilibrated"]], eq[eq["all_diverged"]]
    s_theory = theory.iso_slope(first["optimizer"])
    row = {k: first[k] for k in CELL_KEYS} | {
        "role": "control" if first["norm"] == "none" else "test",
        "expected": "FAIL" if first["norm"] == "none" else "PASS", "s_theory": s_theory,
        "n_points": len(used), "n_excluded": len(excluded), "n_lr": used["lr"].nunique(),
        "n_l2": used["l2"].nunique(), "n_seeds_median": float(used["n_seeds"].median())
        if len(used) else 0.0, "n_diverged_points": len(diverged),
        "n_partly_diverged": int((used["n_diverged"] > 0).sum()),
        "excluded": [[float(a), float(b)] for a, b in zip(excluded["lr"], excluded["l2"], strict=True)],
        "diverged": [[float(a), float(b)] for a, b in zip(diverged["lr"], diverged["l2"], strict=True)]}
    if len(used) < MIN_POINTS or row["n_lr"] < MIN_DISTINCT or row["n_l2"] < MIN_DISTINCT:
        return row | {"verdict": "INSUFFICIENT", "reason": (
            f"{len(used)} equilibrated, non-diverged points over {row['n_lr']} lr x {row['n_l2']} l2 values; "
            f"need >= {MIN_POINTS} points and >= {MIN_DISTINCT} of each")}
    fit = fit_slope(used["lr"].to_numpy(float), used["l2"].to_numpy(float),
                    list(used["errors"]), settings.n_boot, cell_rng(settings, first["cell"]))
    return row | collapse_stats(fit, len(used), row["n_lr"], row["n_l2"], s_theory,
                                settings.s_tolerance)


def collapse_stats(fit, n: int, n_lr: int, n_l2: int, s_theory: float, tol: float) -> dict:
    """Adjusted R^2s, gain and the verdict for a fitted cell."""
    adj_1d = adjusted_r2(fit.r2_1d, n, fit.dof + 1)
    adj_lr = adjusted_r2(fit.r2_lr, n, min(fit.dof, n_lr))
    adj_l2 = adjusted_r2(fit.r2_l2, n, min(fit.dof, n_l2))
    best_single = max(fit.r2_lr, fit.r2_l2)
    gain = (fit.r2_1d - best_single) / (1 - best_single) if best_single < 1 else 0.0
    stats = asdict(fit) | {"r2adj_1d": adj_1d, "r2adj_lr": adj_lr, "r2adj_l2": adj_l2,
                           "gain": gain}
    if not np.isfinite(fit.r2_1d):
        return stats | {"verdict": "INSUFFICIENT", "reason": "test error constant over points"}
    weak = []  # the 1-D model does not explain the errors: FAIL whatever s is
    if not adj_1d >= R2_MIN:
        weak.append(f"adjusted R^2_1D {adj_1d:.3f} < {R2_MIN}")
    if not gain >= GAIN_MIN:
        weak.append(f"gain over best single variable {gain:.3f} < {GAIN_MIN}")
    inside = fit.ci_low - tol <= s_theory <= fit.ci_high + tol
    where = f"theory s={s_theory:g} outside [{fit.ci_low:.3f}, {fit.ci_high:.3f}] +- {tol:g}"
    if weak:
        return stats | {"verdict": "FAIL", "reason": "; ".join(([] if inside else [where]) + weak)}
    if all(fit.ci_low - tol <= c <= fit.ci_high + tol for c in CANDIDATE_SLOPES):
        return stats | {"verdict": "INSUFFICIENT", "reason": (
            f"interval [{fit.ci_low:.3f}, {fit.ci_high:.3f}] +- {tol:g} holds both s = 1/2 "
            "and s = 1: cannot tell the two theories apart")}
    return stats | ({"verdict": "PASS", "reason": "all criteria met"} if inside
                    else {"verdict": "FAIL", "reason": where})


def large_l2_threshold(cell_points: pd.DataFrame, settings: CheckSettings) -> float:
    """l2 above this is the large-l2 regime (rules()); inf when unknown."""
    if settings.large_l2 is not None:
        return settings.large_l2
    grad = cell_points["grad_norm_conv"].median()
    return float(grad) / 2 if np.isfinite(grad) else np.inf


def spread_ratio(p: pd.DataFrame) -> tuple[float, float]:
    """(mean over lr of std across l2, mean over l2 of std across lr) of the point means."""
    across_l2 = p.groupby("lr")["fit_mean"].agg(lambda e: e.std(ddof=0) if len(e) > 1 else np.nan)
    across_lr = p.groupby("l2")["fit_mean"].agg(lambda e: e.std(ddof=0) if len(e) > 1 else np.nan)
    return float(across_l2.mean()), float(across_lr.mean())


def projection_row(cell_points: pd.DataFrame, l2_points: pd.DataFrame | None,
                   settings: CheckSettings) -> dict:
    """The l2-sensitivity of one update=projection cell (and of its update=l2 twin)."""
    first = cell_points.iloc[0]
    threshold = large_l2_threshold(cell_points, settings)
    p = cell_points[(cell_points["l2"] <= threshold) & cell_points["fit_mean"].notna()]
    row = {k: first[k] for k in CELL_KEYS} | {
        "role": "test", "expected": "PASS", "large_l2": threshold, "n_points": len(p),
        "n_large_l2": int((cell_points["l2"] > threshold).sum()),
        "n_diverged_points": int(cell_points["all_diverged"].sum()),
        "n_lr": p["lr"].nunique(), "n_l2": p["l2"].nunique()}
    sd_l2, sd_lr = spread_ratio(p) if len(p) else (np.nan, np.nan)
    var = (p["error_sd"] ** 2 / p["errors"].map(len)).dropna()  # variance of a point mean
    row |= {"spread_l2": sd_l2, "spread_lr": sd_lr,
            "noise_sd": float(np.sqrt(var.mean())) if len(var) else np.nan}
    row["ratio"] = sd_l2 / sd_lr if sd_lr > 0 else np.nan
    if l2_points is not None and len(l2_points):
        twin = l2_points[(l2_points["l2"] <= threshold) & l2_points["fit_mean"].notna()]
        a, b = spread_ratio(twin)
        row["ratio_update_l2"] = a / b if b > 0 else np.nan
    if row["n_lr"] < 2 or row["n_l2"] < 2 or not np.isfinite(row["ratio"]):
        return row | {"verdict": "INSUFFICIENT", "reason": (
            f"{row['n_lr']} lr x {row['n_l2']} l2 values below the large-l2 regime, "
            "or no spread across lr")}
    ok = row["ratio"] <= FLAT_MAX
    return row | {"verdict": "PASS" if ok else "FAIL",
                  "reason": f"ratio {row['ratio']:.3f} {'<=' if ok else '>'} {FLAT_MAX}"}


def equilibrium_tables(points: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-point angular-update ratios and the per-cell summary with a verdict."""
    cols = POINT_KEYS + [f"{layer}_ang_ratio" for layer in CONV_LAYERS] + ["ang_ratio", "n_seeds"]
    mask = (points["update"] == "l2") & (points["norm"] != "none") & (points["l2"] > 0)
    eligible = points[mask]
    per_point = eligible[eligible["equilibrated"] & eligible["ang_ratio"].notna()][cols]
    rows = []
    for cell, p in eligible.groupby("cell", sort=True):
        used = per_point[per_point["cell"] == cell]
        median = float(used["ang_ratio"].median()) if len(used) else np.nan
        row = {k: p.iloc[0][k] for k in CELL_KEYS} | {
            "role": "test", "expected": "PASS", "n_points": len(used),
            "ratio_median": median, "ratio_q25": float(used["ang_ratio"].quantile(0.25))
            if len(used) else np.nan, "ratio_q75": float(used["ang_ratio"].quantile(0.75))
            if len(used) else np.nan}
        if not len(used):
            row |= {"verdict": "INSUFFICIENT", "reason": "no equilibrated point with a "
                    "measured and predicted angular update"}
        else:
            ok = EQ_RATIO[0] <= median <= EQ_RATIO[1]
            row |= {"verdict": "PASS" if ok else "FAIL",
                    "reason": f"median ratio {median:.3f} {'inside' if ok else 'outside'} "
                              f"[{EQ_RATIO[0]:.3g}, {EQ_RATIO[1]:.3g}]"}
        rows.append(row)
    return per_point.reset_index(drop=True), pd.DataFrame(rows)


def run_checks(results: Results, settings: CheckSettings = CheckSettings()) -> Checks:
    """All checks on the results' trials."""
    points = point_table(results.trials, settings.relax_factor)
    by_cell = dict(tuple(points.groupby("cell", sort=True)))
    collapse = [collapse_row(p, settings) for p in by_cell.values()
                if p.iloc[0]["update"] == "l2" and (p["l2"] > 0).any()]
    projection = []
    for p in by_cell.values():
        if p.iloc[0]["update"] == "projection":
            twin = points[(points["optimizer"] == p.iloc[0]["optimizer"])
                          & (points["norm"] == p.iloc[0]["norm"]) & (points["update"] == "l2")
                          & (points["setting"] == p.iloc[0]["setting"])]
            projection.append(projection_row(p, twin, settings))
    eq_points, eq_cells = equilibrium_tables(points)
    return Checks(points, pd.DataFrame(collapse), pd.DataFrame(projection), eq_points,
                  eq_cells, settings)


def verdict_table(checks: Checks) -> pd.DataFrame:
    """One row per verdict: check, cell, role, expected, verdict, summary (for every output)."""
    rows = []
    for r in checks.collapse.to_dict("records"):
        summary = f"{r['n_points']} pts"
        if r["verdict"] != "INSUFFICIENT" and np.isfinite(r.get("s", np.nan)):
            summary += (f"; s={r['s']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] vs theory "
                        f"{r['s_theory']:g}; adj R^2 1-D {r['r2adj_1d']:.3f}, lr-only "
                        f"{r['r2adj_lr']:.3f}, l2-only {r['r2adj_l2']:.3f}")
        rows.append(("collapse", r, summary))
    for r in checks.projection.to_dict("records"):
        rows.append(("projection", r, f"{r['n_points']} pts" if r["verdict"] == "INSUFFICIENT"
                     else f"{r['n_points']} pts; l2-sensitivity ratio {r['ratio']:.3f} "
                     f"(update=l2: {r.get('ratio_update_l2', np.nan):.3f})"))
    for r in checks.equilibrium_cells.to_dict("records"):
        rows.append(("equilibrium", r, f"{r['n_points']} pts" if r["verdict"] == "INSUFFICIENT"
                     else f"{r['n_points']} pts; measured/predicted angular update median "
                     f"{r['ratio_median']:.3f}"))
    return pd.DataFrame([{"check": c, "cell": r["cell"], "role": r["role"],
                          "expected": r["expected"], "verdict": r["verdict"], "summary": s,
                          "reason": r["reason"]} for c, r, s in rows],
                        columns=["check", "cell", "role", "expected", "verdict", "summary",
                                 "reason"])


def _clean(value):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: _clean(v) for k, v in r.items()} for r in df.to_dict("records")]


def to_json(checks: Checks, results: Results) -> str:
    """collapse.json: settings, thresholds, inputs and every statistic (deterministic)."""
    payload = {
        "settings": asdict(checks.settings) | {"s_grid": [float(S_GRID[0]), float(S_GRID[-1]),
                                                          round(float(S_GRID[1] - S_GRID[0]), 10)]},
        "thresholds": {"min_points": MIN_POINTS, "min_distinct": MIN_DISTINCT,
                       "r2_min": R2_MIN, "gain_min": GAIN_MIN, "flat_max": FLAT_MAX,
                       "candidate_slopes": list(CANDIDATE_SLOPES), "s_tolerance": checks.settings.s_tolerance,
                       "equilibrium_ratio": list(EQ_RATIO), "ci_level": CI_LEVEL,
                       "chance_error": CHANCE_ERROR},
        "inputs": {"n_found": results.n_found, "n_used": len(results.trials),
                   "n_skipped": len(results.skipped),
                   "skipped": [[t, kind] for t, kind, _ in results.skipped]},
        "verdicts": _records(verdict_table(checks)),
        "collapse": _records(checks.collapse),
        "projection": _records(checks.projection),
        "equilibrium": _records(checks.equilibrium_cells),
        "equilibrium_points": _records(checks.equilibrium),
    }
    return json.dumps(_clean_tree(payload), indent=1, sort_keys=True, allow_nan=False)


def _clean_tree(value):
    if isinstance(value, dict):
        return {k: _clean_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_tree(v) for v in value]
    return _clean(value)


def to_csv_frame(checks: Checks) -> pd.DataFrame:
    """collapse.csv: one row per statistic-bearing row of every check, columns united."""
    parts = [checks.collapse.assign(check="collapse"), checks.projection.assign(check="projection"),
             checks.equilibrium_cells.assign(check="equilibrium"),
             checks.equilibrium.assign(check="equilibrium_point")]
    frame = pd.concat([p for p in parts if len(p)], ignore_index=True)
    for col in ("excluded", "diverged"):
        if col in frame:
            frame[col] = [" ".join(f"{a:g}/{b:g}" for a, b in e) if isinstance(e, list) else ""
                          for e in frame[col]]
    for col in frame:
        values = frame[col].dropna()
        if col.startswith("n_") and len(values) and (values == values.round()).all():
            frame[col] = frame[col].astype("Int64")  # counts stay integers next to blanks
    first = ["check", "cell", "optimizer", "norm", "update", "setting", "verdict"]
    return frame[[c for c in first if c in frame] + [c for c in frame if c not in first]]

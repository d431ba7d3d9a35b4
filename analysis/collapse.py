"""The quantitative checks of docs/theory.md (iso-lines, projection, equilibrium) on per-point
mean test errors, under the rules of analysis/rules.py.

- collapse (update=l2, l2 > 0): is test error a function of log(lr) + s*log(l2) with the
  theory's s (1 for sgd/momentum/adamw, 1/2 for adam)? norm=none is the control.
- projection (update=projection): is test error flat in l2 below the large-l2 regime?
- equilibrium (update=l2, normalized, l2 > 0): measured angular update over the theory's
  equilibrium value, at the last epoch, for points that had time to reach equilibrium.
Thresholds and their wording (rule_texts) live in analysis/rules.py.
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from l2bn import theory
from l2bn.schema import CONV_LAYERS, layer_column, layer_columns

from . import rules as R
from .equilibrium import last_epoch_drifts
from .fit import SlopeFit, adjusted_r2, fit_slope, smooth
from .isolines import diagonal_ids, iso_line_test
from .load import CHANCE_ERROR, Results
from .outcome import last_evals
from .stats import FTest, lack_of_fit, two_way

POINT_KEYS = ["cell", "optimizer", "norm", "update", "setting", "lr", "l2"]
CELL_KEYS = POINT_KEYS[:5]
EQUILIBRIUM_RULES = ("measured", "relaxation", "all")
DEAD_COLUMNS = layer_columns("dead_fraction", CONV_LAYERS)  # last epoch, l2bn/metrics.py


@dataclass(frozen=True)
class CheckSettings:
    """Knobs of the checks that are not rules (the report's command-line options); a
    non-default `equilibrium` or `large_l2` is an exploration, flagged as such in the report."""

    n_boot: int = 200
    seed: int = 0
    large_l2: float | None = None  # None: from the measured gradient norm (see rule_texts())
    equilibrium: str = "measured"  # or "relaxation" (rules version 1, factor 1) or "all"
    rules: str | R.Version = R.RULES_VERSION  # a version name, or a variant (analysis/rule_changes.py)


@dataclass
class Checks:
    """Per-point table and the three check tables."""

    points: pd.DataFrame
    collapse: pd.DataFrame
    projection: pd.DataFrame
    equilibrium: pd.DataFrame  # per point
    equilibrium_cells: pd.DataFrame  # per cell summary with verdict
    settings: CheckSettings
    sensitivity: pd.DataFrame = None  # collapse slope under other equilibrium rules
    cells: pd.DataFrame = None  # per cell: best error and dead-channel fractions (descriptive)
    collapse_train: pd.DataFrame = None  # the collapse on train loss (rules "3")


def point_table(trials: pd.DataFrame, rule: str = "measured") -> pd.DataFrame:
    """One row per (cell, lr, l2): error_mean (diverged seeds at chance, for plots), errors
    and fit_mean (non-diverged seeds only, for fits), divergence, drifts and equilibrium.
    `trials` carries norm_drift and angle_drift per trial (equilibrium.last_epoch_drifts)."""
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
    points["equilibrated"] = equilibrated(points, rule)
    return points


def equilibrated(points: pd.DataFrame, rule: str = "measured", factor: float = 1.0) -> pd.Series:
    """Which points can have equilibrated under a rule (rule_texts()); `factor` scales the measured
    rule's thresholds (or multiplies the relaxation time for the relaxation rule)."""
    positive = points["l2"] > 0
    if rule == "all":
        return positive
    if rule == "relaxation":
        return positive & (factor * points["relax_steps"].where(positive, 0) <= points["budget_steps"])
    if rule != "measured":
        raise ValueError(f"unknown equilibrium rule {rule!r}; expected one of {EQUILIBRIUM_RULES}")
    angle_ok = points["angle_drift"].isna() | (points["angle_drift"] <= factor * R.ANGLE_DRIFT_MAX)
    return positive & (points["norm_drift"] <= factor * R.NORM_DRIFT_MAX) & angle_ok


def enough_points(p: pd.DataFrame) -> bool:
    """At least MIN_POINTS points over MIN_DISTINCT distinct lr and l2 values: what a collapse
    fit needs."""
    return (len(p) >= R.MIN_POINTS and p["lr"].nunique() >= R.MIN_DISTINCT
            and p["l2"].nunique() >= R.MIN_DISTINCT)


def with_forecast_fallback(points: pd.DataFrame) -> pd.DataFrame:
    """Rules "4": points with a `basis` column; in an update=l2 cell whose measured-equilibrated
    points are not enough_points but whose points with PLAN_RELAX_FACTOR forecast relaxation
    times in their budget are, those are the cell's equilibrated points (basis "forecast")."""
    out = points.assign(basis="measured")
    ready = equilibrated(points, "relaxation", R.PLAN_RELAX_FACTOR)
    for _, idx in out.groupby("cell", sort=True).groups.items():
        c = out.loc[idx]
        alive = ~c["all_diverged"] & (c["l2"] > 0)
        if (c.iloc[0]["update"] != "l2" or enough_points(c[alive & c["equilibrated"]])
                or not enough_points(c[alive & ready[idx]])):
            continue
        out.loc[idx, "equilibrated"] = ready[idx]
        out.loc[idx, "basis"] = "forecast"
    return out


def basis_note(p: pd.DataFrame) -> str:
    """'' for the measured basis; for a forecast-fallback cell, the words its reasons start
    with."""
    if "basis" not in p or p.iloc[0]["basis"] != "forecast":
        return ""
    return (f"forecast basis (rules 4 fallback: too few points passed the measured equilibrium "
            f"test; judged on the points with >= {R.PLAN_RELAX_FACTOR:g} forecast relaxation "
            "times): ")


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
    ids = diagonal_ids(lr, l2, theory.iso_slope(p.iloc[0]["optimizer"]))
    return bool((pd.Series(lr).groupby(ids).nunique() >= 2).all())


def cell_rng(settings: CheckSettings, cell: str) -> np.random.Generator:
    """A generator that depends only on the RNG seed and the cell, so results are stable."""
    return np.random.default_rng([settings.seed, zlib.crc32(cell.encode())])


def collapse_row(cell_points: pd.DataFrame, settings: CheckSettings) -> dict:
    """The collapse statistics and verdict of one (optimizer, norm, update=l2) cell."""
    first = cell_points.iloc[0]
    p = cell_points[cell_points["l2"] > 0]
    # all-diverged points are listed as such whatever the rule (they have no drift to measure)
    diverged = p[p["all_diverged"]]
    used = p[p["equilibrated"] & ~p["all_diverged"]]
    excluded = p[~p["equilibrated"] & ~p["all_diverged"]]
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
    if "basis" in p:
        row["basis"] = first["basis"]
    version, note = R.version(settings.rules), basis_note(p)
    if version.chance_guard and at_chance(p):
        guard = R.CHANCE_ERROR - R.CHANCE_MARGIN
        reason = note + (f"every point at chance: mean test error >= {guard:g} at all "
                         f"{int(p['test_mean'].notna().sum())} non-diverged points")
        iso = ({"n_diagonals": 0, "n_iso_points": 0, "iso_verdict": "INSUFFICIENT",
                "iso_reason": reason} if version.iso_test else {})
        return row | iso | {"verdict": "INSUFFICIENT", "reason": reason}
    row |= iso_line_test(used, s_theory) if version.iso_test else {}
    if note and "iso_reason" in row:
        row["iso_reason"] = note + row["iso_reason"]
    if not enough_points(used):
        return row | {"verdict": "INSUFFICIENT", "reason": note + (
            f"{len(used)} equilibrated, non-diverged points over {row['n_lr']} lr x "
            f"{row['n_l2']} l2 values; need >= {R.MIN_POINTS} points and >= {R.MIN_DISTINCT} of each")}
    lr, l2, errors = used["lr"].to_numpy(float), used["l2"].to_numpy(float), list(used["errors"])
    fit = fit_slope(lr, l2, errors, settings.n_boot, cell_rng(settings, first["cell"]))
    lof = None
    if np.isfinite(fit.s):
        means = np.array([e.mean() for e in errors])[None]
        fitted = smooth(np.log(lr) + fit.s * np.log(l2), means, fit.dof)[0]
        lof = lack_of_fit(errors, fitted, fit.dof + 1)
    stats = collapse_stats(fit, len(used), row["n_lr"], row["n_l2"], s_theory, lof)
    return row | stats | {"reason": note + stats["reason"]}


def at_chance(points: pd.DataFrame) -> bool:
    """Every non-diverged point's mean test error within CHANCE_MARGIN of chance (rules "3")."""
    means = points["test_mean"].dropna()
    return bool(len(means)) and bool((means >= R.CHANCE_ERROR - R.CHANCE_MARGIN).all())


def collapse_stats(fit: SlopeFit, n: int, n_lr: int, n_l2: int, s_theory: float,
                   lof: FTest | None = None) -> dict:
    """Adjusted R^2s, gain, lack of fit and the verdict for a fitted cell (rule_texts())."""
    adj_1d = adjusted_r2(fit.r2_1d, n, fit.dof + 1)
    adj_lr = adjusted_r2(fit.r2_lr, n, min(fit.dof, n_lr))
    adj_l2 = adjusted_r2(fit.r2_l2, n, min(fit.dof, n_l2))
    best_single = max(fit.r2_lr, fit.r2_l2)
    gain = (fit.r2_1d - best_single) / (1 - best_single) if best_single < 1 else 0.0
    lof_p = lof.p if lof is not None else np.nan
    stats = asdict(fit) | {"r2adj_1d": adj_1d, "r2adj_lr": adj_lr, "r2adj_l2": adj_l2,
                           "gain": gain, "lof_f": lof.f if lof is not None else np.nan,
                           "lof_df": [lof.df1, lof.df2] if lof is not None else None,
                           "lof_p": lof_p}
    if not np.isfinite(fit.r2_1d):
        return stats | {"verdict": "INSUFFICIENT", "descriptive": "INSUFFICIENT",
                        "reason": "test error constant over points"}
    tol = R.S_TOLERANCE
    weak = []  # the 1-D model does not explain the errors: FAIL whatever s is
    if not adj_1d >= R.R2_MIN:
        weak.append(f"adjusted R^2_1D {adj_1d:.3f} < {R.R2_MIN}")
    if not gain >= R.GAIN_MIN:
        weak.append(f"gain over best single variable {gain:.3f} < {R.GAIN_MIN}")
    if np.isfinite(lof_p) and lof_p < R.ALPHA:
        weak.append(f"lack of fit against seed noise, p = {lof_p:.2g} < {R.ALPHA:g}")
    inside = fit.ci_low - tol <= s_theory <= fit.ci_high + tol
    where = f"theory s={s_theory:g} outside [{fit.ci_low:.3f}, {fit.ci_high:.3f}] +- {tol:g}"
    if weak:
        verdict, reason = "FAIL", "; ".join(([] if inside else [where]) + weak)
    elif all(fit.ci_low - tol <= c <= fit.ci_high + tol for c in R.CANDIDATE_SLOPES):
        verdict, reason = "INSUFFICIENT", (
            f"interval [{fit.ci_low:.3f}, {fit.ci_high:.3f}] +- {tol:g} holds both s = 1/2 "
            "and s = 1: cannot tell the two theories apart")
    else:
        verdict, reason = ("PASS", "all criteria met") if inside else ("FAIL", where)
    if fit.bootstrap == "seeds" and np.isfinite(lof_p):
        return stats | {"verdict": verdict, "descriptive": verdict, "reason": reason}
    return stats | {"verdict": "DESCRIPTIVE", "descriptive": verdict, "reason": (
        f"one seed: lack of fit against seed noise cannot be tested; the other criteria give "
        f"{verdict} ({reason})")}


def large_l2_threshold(cell_points: pd.DataFrame, settings: CheckSettings) -> float:
    """l2 above this is the large-l2 regime (rule_texts()); inf when unknown."""
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
    if row["n_lr"] < 2 or row["n_l2"] < 2:
        return row | {"verdict": "INSUFFICIENT", "reason": (
            f"{row['n_lr']} lr x {row['n_l2']} l2 values below the large-l2 regime")}
    y = np.concatenate(list(p["errors"]))
    lr = np.repeat(p["lr"].to_numpy(float), p["errors"].map(len))
    l2 = np.repeat(p["l2"].to_numpy(float), p["errors"].map(len))
    tests = two_way(y, lr, l2)
    row |= {"test": tests.l2.test, "l2_effect": tests.l2_effect_rms, "l2_f": tests.l2.f,
            "l2_df": [tests.l2.df1, tests.l2.df2], "l2_p": tests.l2.p, "lr_p": tests.lr.p}
    if not np.isfinite(tests.l2.p):
        return row | {"verdict": "INSUFFICIENT", "reason": "no residual degrees of freedom for "
                      "the noise (too few points or seeds)"}
    if tests.l2.p < R.ALPHA:
        return row | {"verdict": "FAIL", "reason": (
            f"l2 effect {tests.l2_effect_rms:.4f} (RMS test error), p = {tests.l2.p:.2g} < "
            f"{R.ALPHA:g}")}
    if not tests.lr.p < R.ALPHA:
        return row | {"verdict": "INSUFFICIENT", "reason": (
            f"no significant lr effect either (p = {tests.lr.p:.2g}): the design cannot show "
            "flatness")}
    return row | {"verdict": "PASS", "reason": (
        f"l2 effect {tests.l2_effect_rms:.4f} not significant (p = {tests.l2.p:.2g}); lr "
        f"effect p = {tests.lr.p:.2g}")}


def equilibrium_tables(points: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-point angular-update ratios and norm balance, and the per-cell verdict."""
    cols = (POINT_KEYS + layer_columns("ang_ratio", CONV_LAYERS)
            + ["ang_ratio", "balance", "norm_drift", "angle_drift", "n_seeds"])
    mask = (points["update"] == "l2") & (points["norm"] != "none") & (points["l2"] > 0)
    eligible = points[mask]
    per_point = eligible[eligible["equilibrated"] & eligible["balance"].notna()][cols]
    lo, hi = R.BALANCE_BAND
    rows = []
    for cell, p in eligible.groupby("cell", sort=True):
        used = per_point[per_point["cell"] == cell]
        median = float(used["balance"].median()) if len(used) else np.nan
        row = {k: p.iloc[0][k] for k in CELL_KEYS} | {
            "role": "test", "expected": "PASS", "n_points": len(used),
            "balance_exponent": theory.balance_exponent(p.iloc[0]["optimizer"]),
            "balance_median": median,
            "balance_q25": float(used["balance"].quantile(0.25)) if len(used) else np.nan,
            "balance_q75": float(used["balance"].quantile(0.75)) if len(used) else np.nan,
            "ratio_median": float(used["ang_ratio"].median()) if len(used) else np.nan}
        note = basis_note(p)
        if "basis" in p:
            row["basis"] = p.iloc[0]["basis"]
        if not len(used):
            row |= {"verdict": "INSUFFICIENT", "reason": note + "no equilibrated point with a "
                    "measured and predicted angular update"}
        else:
            ok = lo <= median <= hi
            row |= {"verdict": "PASS" if ok else "FAIL",
                    "reason": note + f"median balance {median:.3f} {'inside' if ok else 'outside'}"
                              f" [{lo:.3g}, {hi:.3g}]"}
        rows.append(row)
    return per_point.reset_index(drop=True), pd.DataFrame(rows)


def cell_table(points: pd.DataFrame) -> pd.DataFrame:
    """Per cell, descriptive (no verdict): the best point's mean test error, and each conv
    layer's dead-channel fraction at the last epoch (share of channels turning < 1% of the
    layer's angle, l2bn/metrics.py), median over the cell's non-diverged points and over the
    points the collapse fit uses (equilibrated, l2 > 0)."""
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


def sensitivity_table(points: pd.DataFrame, settings: CheckSettings) -> pd.DataFrame:
    """The collapse slope of each cell under other equilibrium rules: the measured rule with
    its thresholds scaled by SENSITIVITY_FACTORS, the relaxation rule (and, under rules with
    the forecast fallback, the relaxation rule at PLAN_RELAX_FACTOR), all l2 > 0 points. `used`
    marks the rule the cell's verdict rests on (its basis)."""
    forecast_rule = ("relaxation", R.PLAN_RELAX_FACTOR)
    variants = ([("measured", f) for f in R.SENSITIVITY_FACTORS] + [("relaxation", 1.0)]
                + ([forecast_rule] if "basis" in points else []) + [("all", 1.0)])
    rows = []
    for cell, p in points.groupby("cell", sort=True):
        if p.iloc[0]["update"] != "l2" or not (p["l2"] > 0).any():
            continue
        forecast = "basis" in p and p.iloc[0]["basis"] == "forecast"
        used = forecast_rule if forecast else (settings.equilibrium, 1.0)
        for rule, factor in variants:
            r = collapse_row(p.assign(equilibrated=equilibrated(p, rule, factor)), settings)
            rows.append({"cell": cell, "rule": rule, "factor": factor,
                         "used": (rule, factor) == used,
                         **{k: r.get(k, np.nan) for k in ("n_points", "s", "ci_low", "ci_high",
                                                          "lof_p", "verdict", "descriptive")}})
    return pd.DataFrame(rows)


def with_seed_outcomes(points: pd.DataFrame, trials: pd.DataFrame, column: str) -> pd.DataFrame:
    """points with errors (each point's non-diverged seeds' `column`), their fit_mean and
    error_sd: what the fits use, so one point table serves the test and the train outcome."""
    ok = trials[~trials["diverged_final"]].groupby(POINT_KEYS, sort=True)[column].agg(list)
    errors = [np.asarray(ok.get(k, []), float)
              for k in points[POINT_KEYS].itertuples(index=False, name=None)]
    return points.assign(errors=errors,
                         fit_mean=[e.mean() if len(e) else np.nan for e in errors],
                         error_sd=[e.std(ddof=1) if len(e) > 1 else np.nan for e in errors])


def run_checks(results: Results, settings: CheckSettings = CheckSettings(),
               sensitivity: bool = True) -> Checks:
    """All checks on the results' trials (and the slope's sensitivity to the equilibrium
    rule, unless `sensitivity` is False)."""
    version = R.version(settings.rules)
    trials = results.trials.drop(columns=["norm_drift", "angle_drift"], errors="ignore")
    trials = trials.merge(last_epoch_drifts(results.history), on="trial_id", how="left")
    if version.outcome_evals > 1:
        trials = with_outcome(trials, results.history, version.outcome_evals)
    points = point_table(trials, settings.equilibrium)
    if version.forecast_fallback and settings.equilibrium == "measured":
        points = with_forecast_fallback(points)
    by_cell = dict(tuple(points.groupby("cell", sort=True)))
    collapse = collapse_rows(points, settings)
    collapse_train = None
    if version.train_loss:
        # the same points (equilibrium, drifts, chance guard) judged on the train loss
        train = trials.assign(train_outcome=trials.get("train_outcome", trials["train_loss"]))
        collapse_train = pd.DataFrame(collapse_rows(
            with_seed_outcomes(points, train, "train_outcome"), settings))
    projection = []
    for p in by_cell.values():
        if p.iloc[0]["update"] == "projection":
            twin = points[(points["optimizer"] == p.iloc[0]["optimizer"])
                          & (points["norm"] == p.iloc[0]["norm"]) & (points["update"] == "l2")
                          & (points["setting"] == p.iloc[0]["setting"])]
            projection.append(projection_row(p, twin, settings))
    eq_points, eq_cells = equilibrium_tables(points)
    sens = sensitivity_table(points, settings) if sensitivity else pd.DataFrame()
    return Checks(points, pd.DataFrame(collapse), pd.DataFrame(projection), eq_points,
                  eq_cells, settings, sens, cell_table(points), collapse_train)


def collapse_rows(points: pd.DataFrame, settings: CheckSettings) -> list[dict]:
    """collapse_row of every update=l2 cell with some l2 > 0."""
    return [collapse_row(p, settings) for _, p in points.groupby("cell", sort=True)
            if p.iloc[0]["update"] == "l2" and (p["l2"] > 0).any()]


def with_outcome(trials: pd.DataFrame, history: pd.DataFrame, k: int) -> pd.DataFrame:
    """Trials judged on the mean of their last k evaluations (outcome.last_evals): error_plot
    from the test error, train_outcome from the train loss; a trial without usable history
    keeps its final row's values."""
    t = trials.drop(columns=["test_outcome", "train_outcome", "n_evals"], errors="ignore")
    t = t.merge(last_evals(history, k), on="trial_id", how="left")
    test = t["test_outcome"].fillna(t["test_error"].astype(float))
    t["train_outcome"] = t["train_outcome"].fillna(t["train_loss"].astype(float))
    t["error_plot"] = np.where(t["diverged_final"], CHANCE_ERROR, test)
    return t


def collapse_summary(r: dict, singles: bool) -> str:
    """'9 pts; s=... [...] vs theory 1; lack-of-fit p ...; adj R^2 1-D ...' (with the lr-only
    and l2-only models' adjusted R^2 when `singles`)."""
    summary = f"{r['n_points']} pts"
    if not np.isfinite(r.get("s", np.nan)):
        return summary
    summary += (f"; s={r['s']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] vs theory "
                f"{r['s_theory']:g}; lack-of-fit p {r['lof_p']:.3g}; adj R^2 1-D {r['r2adj_1d']:.3f}")
    return summary + (f", lr-only {r['r2adj_lr']:.3f}, l2-only {r['r2adj_l2']:.3f}" if singles else "")


def verdict_table(checks: Checks) -> pd.DataFrame:
    """One row per verdict: check, cell, role, expected, verdict, summary (for every output)."""
    rows = []
    for r in checks.collapse.to_dict("records"):
        rows.append(("collapse", r, collapse_summary(r, singles=True)))
    for r in (checks.collapse_train.to_dict("records")
              if checks.collapse_train is not None else []):
        rows.append(("collapse_train", r, collapse_summary(r, singles=False)))
    for r in checks.collapse.to_dict("records"):
        if "iso_verdict" not in r:
            continue
        summary = f"{r.get('n_diagonals', 0)} diagonals, {r.get('n_iso_points', 0)} pts"
        if np.isfinite(r.get("iso_along_p", np.nan)):
            summary += (f"; along slope {r['iso_slope']:+.4f} +- {r['iso_slope_se']:.4f}/doubling"
                        f" (p {r['iso_along_p']:.3g}), across p {r['iso_across_p']:.3g}; along "
                        f"{r['iso_along']:.4f} vs across {r['iso_across']:.4f}")
        rows.append(("iso_lines", r | {"verdict": r["iso_verdict"], "reason": r["iso_reason"]},
                     summary))
    for r in checks.projection.to_dict("records"):
        summary = f"{r['n_points']} pts"
        if np.isfinite(r.get("l2_p", np.nan)):
            summary += (f"; l2 effect {r['l2_effect']:.4f} (p {r['l2_p']:.3g}), lr effect p "
                        f"{r['lr_p']:.3g}; spread ratio {r['ratio']:.3f} (update=l2: "
                        f"{r.get('ratio_update_l2', np.nan):.3f})")
        rows.append(("projection", r, summary))
    for r in checks.equilibrium_cells.to_dict("records"):
        rows.append(("equilibrium", r, f"{r['n_points']} pts" if r["verdict"] == "INSUFFICIENT"
                     else f"{r['n_points']} pts; norm balance median {r['balance_median']:.3f} "
                     f"(angle ratio median {r['ratio_median']:.3f}, ^{r['balance_exponent']})"))
    return pd.DataFrame([{"check": c, "cell": r["cell"], "role": r["role"],
                          "expected": r["expected"], "verdict": r["verdict"], "summary": s,
                          "reason": r["reason"]} for c, r, s in rows],
                        columns=["check", "cell", "role", "expected", "verdict", "summary",
                                 "reason"])

"""The premise of every prediction: which points reached the equilibrium the theory assumes.

A point (lr, l2 > 0) is used when its weights stopped moving at the end of training, measured
from its own history (analysis/equilibrium.py: norm drift per relaxation time, change of the
measured/predicted angle over the last epoch). The theory also forecasts how long that takes
(docs/theory.md#relaxation-times): a point whose budget holds RELAX_FACTOR relaxation times
should have settled. A cell whose forecast-ready points do not settle fails the premise: the
verdict says so instead of judging a prediction whose premise does not hold.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

NORM_DRIFT_MAX = 0.10  # |d ln||w||| per relaxation time at the last epoch's pace
ANGLE_DRIFT_MAX = 0.10  # |change of ln(measured/predicted angle)| over the last epoch
# Both thresholds scaled: points near them excluded (2/3), as stated (1), included (3/2). A
# verdict must be the same under all three, else it is not robust (docs/protocol.md).
EDGE_FACTORS = (2 / 3, 1.0, 3 / 2)
RELAX_FACTOR = 3.0  # relaxation times a budget must hold for the forecast to expect equilibrium
PLAN_GRAD = 1.0  # analysis.plan: Adam's unit gradient norm, assumed before anything runs
MIN_POINTS = 6  # a fit needs this many used points ...
MIN_DISTINCT = 3  # ... over this many distinct lr and l2 values
CHANCE_ERROR = 0.9  # a 10-class guess; diverged trials count as this wherever an error is averaged
CHANCE_MARGIN = 0.03

NOT_EQUILIBRATED = "NOT EQUILIBRATED"

TEXT = (
    f"**Premise (equilibrium).** A point (lr, l2 > 0) is used when the median over its "
    f"non-diverged seeds of each trial's last-epoch drifts, the largest over conv layers, is "
    f"small: norm drift = |ln(||w||_E/||w||_E-1)| per step x theory.relaxation_steps <= "
    f"{NORM_DRIFT_MAX:g}, and angle drift = |change of ln(measured/predicted angular update)| "
    f"over the last epoch <= {ANGLE_DRIFT_MAX:g} (where a prediction exists); a trial with "
    f"fewer than two measured epochs has no drift and is not used. A fit needs >= "
    f"{MIN_POINTS} used points over >= {MIN_DISTINCT} distinct lr and l2 values; a design "
    "whose non-diverged points are fewer than that is INSUFFICIENT. When only the used points "
    f"are fewer, the forecast decides what that means: if >= {MIN_POINTS} points (over >= "
    f"{MIN_DISTINCT} lr and l2) had {RELAX_FACTOR:g} relaxation times in their budget "
    "(theory.relaxation_steps with each point's measured gradient norm), the cell is "
    f"**{NOT_EQUILIBRATED}**: the theory's premise failed where it was expected to hold, and "
    "the slope fitted on those points is shown as descriptive; otherwise INSUFFICIENT (the "
    f"budget is too short). A cell whose every non-diverged point has mean test error >= "
    f"{CHANCE_ERROR - CHANCE_MARGIN:g} (chance {CHANCE_ERROR:g} less {CHANCE_MARGIN:g}) is "
    "INSUFFICIENT: it shows nothing the theory speaks of. **Edge robustness**: every check "
    "that uses these points is run with both drift thresholds scaled by "
    + ", ".join(f"{f:.3g}" for f in EDGE_FACTORS)
    + " (points near the thresholds excluded, as stated, included); a verdict that is not the "
    "same under all three is reported as INSUFFICIENT (not robust), the three shown.")


@dataclass(frozen=True)
class Premise:
    """A cell's usable points under one edge factor, or the verdict that stops the check."""

    used: pd.DataFrame
    ready: pd.DataFrame  # forecast-ready, non-diverged points (the descriptive fit's points)
    verdict: str | None  # None: the prediction can be judged on `used`
    reason: str


def equilibrated(points: pd.DataFrame, factor: float = 1.0) -> pd.Series:
    """Which points pass the measured equilibrium test with both thresholds scaled by factor."""
    angle_ok = points["angle_drift"].isna() | (points["angle_drift"] <= factor * ANGLE_DRIFT_MAX)
    return (points["l2"] > 0) & (points["norm_drift"] <= factor * NORM_DRIFT_MAX) & angle_ok


def relaxes_in_budget(l2, relax_steps, budget_steps):
    """Whether a budget holds RELAX_FACTOR forecast relaxation times (never where l2 = 0);
    scalars or Series alike, so the check and `analysis.plan` apply one rule."""
    return (l2 > 0) & (RELAX_FACTOR * relax_steps <= budget_steps)


def forecast_ready(points: pd.DataFrame) -> pd.Series:
    """Points whose budget holds RELAX_FACTOR forecast relaxation times."""
    return relaxes_in_budget(points["l2"], points["relax_steps"], points["budget_steps"])


def enough_points(p: pd.DataFrame) -> bool:
    """At least MIN_POINTS points over MIN_DISTINCT distinct lr and l2 values."""
    return (len(p) >= MIN_POINTS and p["lr"].nunique() >= MIN_DISTINCT
            and p["l2"].nunique() >= MIN_DISTINCT)


def at_chance(points: pd.DataFrame) -> bool:
    """Every non-diverged point's mean test error within CHANCE_MARGIN of chance."""
    means = points["test_mean"].dropna()
    return bool(len(means)) and bool((means >= CHANCE_ERROR - CHANCE_MARGIN).all())


def premise(cell_points: pd.DataFrame, factor: float = 1.0) -> Premise:
    """The used points of one update=l2 cell under an edge factor, and whether the premise holds."""
    p = cell_points[(cell_points["l2"] > 0) & ~cell_points["all_diverged"]]
    used = p[equilibrated(p, factor)]
    ready = p[forecast_ready(p)]
    if at_chance(cell_points[cell_points["l2"] > 0]):
        guard = CHANCE_ERROR - CHANCE_MARGIN
        return Premise(used, ready, "INSUFFICIENT", f"every point at chance: mean test error >= "
                       f"{guard:g} at all {int(p['test_mean'].notna().sum())} non-diverged points")
    if enough_points(used):
        return Premise(used, ready, None, "")
    if not enough_points(p):  # the design itself is too small, whatever settles
        return Premise(used, ready, "INSUFFICIENT", (
            f"the design has {len(p)} non-diverged points over {p['lr'].nunique()} lr x "
            f"{p['l2'].nunique()} l2 values (need >= {MIN_POINTS} and >= {MIN_DISTINCT} of each)"))
    counts = (f"{len(used)} equilibrated points over {used['lr'].nunique()} lr x "
              f"{used['l2'].nunique()} l2 values (need >= {MIN_POINTS} and >= {MIN_DISTINCT} of each)")
    if enough_points(ready):
        n_ok = int(equilibrated(ready, factor).sum())
        return Premise(used, ready, NOT_EQUILIBRATED, (
            f"{counts}; {len(ready)} points had >= {RELAX_FACTOR:g} forecast relaxation times "
            f"and {n_ok} of them settled: the equilibrium the theory needs is not reached"))
    return Premise(used, ready, "INSUFFICIENT", (
        f"{counts}; only {len(ready)} points had >= {RELAX_FACTOR:g} forecast relaxation "
        "times: the budget is too short for the theory's equilibrium"))

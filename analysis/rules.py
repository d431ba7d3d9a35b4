"""The verdict rules: every threshold of every check, in one place, with a version.

The rules are fixed before the data they judge. Any change bumps RULES_VERSION, is stated in
the README, and every report and collapse.json records the version it was judged under.
Version history:
- "1": relaxation-time equilibrium rule (x --relax-factor), adjusted R^2 and gain for the
  collapse, spread ratio <= 0.3 for projection, [2/3, 3/2] on the angle ratio.
- "2" (issue 10): equilibrium measured from each run's last epoch; collapse lack of fit
  tested against seed noise; projection's l2 effect tested against noise; the equilibrium
  band on the norm balance; one-seed collapse verdicts descriptive.
- "3" (issue 17, committed before the v3 sweep): the outcome is the mean over each trial's
  last OUTCOME_EVALS evaluations (v3's grids evaluate the full 10,000-image test set every
  epoch); the train-loss collapse is judged beside the test-error one; a cell whose every
  point sits at chance is INSUFFICIENT; the direct iso-line test. Everything else as in "2".
- "4" (issue 17, written after v3c's data and committed with the v3d grid before v3d ran):
  the forecast fallback (FALLBACK_TEXT). A cell the measured equilibrium rule leaves without
  enough points, while enough had PLAN_RELAX_FACTOR relaxation times (from each point's
  measured gradient norm) in their budget, is judged on those points. Everything else as "3".
Versions "2" and "3" stay selectable (`--rules 2`, `--rules 3`) so the shipped verdicts
reproduce.
"""
from __future__ import annotations

from dataclasses import dataclass

from .fit import CI_LEVEL, MAX_DOF, POINTS_PER_DOF

RULES_VERSION = "4"  # the default; every version in VERSIONS can be chosen

ALPHA = 0.05  # significance level of every F-test (lack of fit, l2 effect, lr effect)

# Which points can have equilibrated, measured per trial over its last epoch and every conv
# layer (docs/theory.md#relaxation-times): the norm drift per step times the relaxation time
# (how far the norm would still move in one relaxation time at its current pace) and the
# change of ln(measured/predicted angle).
NORM_DRIFT_MAX = 0.10
ANGLE_DRIFT_MAX = 0.10
SENSITIVITY_FACTORS = (0.5, 1.0, 2.0)  # both thresholds scaled, for the report's table

# Collapse (docs/theory.md#iso-lines).
MIN_POINTS = 6  # fewer equilibrated points than this: INSUFFICIENT
MIN_DISTINCT = 3  # ... or fewer distinct lr or l2 values than this
R2_MIN = 0.5  # the 1-D model's adjusted R^2 must reach this (there is something to explain)
GAIN_MIN = 0.5  # ... and remove this share of what the best one-variable model leaves
S_TOLERANCE = 0.05  # slack around the bootstrap interval when comparing with the theory's s
# The two theories' slopes (adam with coupled L2; sgd, momentum, adamw): an interval holding
# both cannot tell them apart.
CANDIDATE_SLOPES = (0.5, 1.0)

# Equilibrium (docs/theory.md#equilibrium-table): median over a cell's equilibrated points of
# the norm balance (measured/predicted angle)^k, k = theory.balance_exponent, in this band.
BALANCE_BAND = (2 / 3, 3 / 2)

# Planning (analysis/plan.py): a grid point counts as able to equilibrate when this many
# relaxation times fit in its budget, with Adam's unit gradient norm assumed to be PLAN_GRAD.
PLAN_RELAX_FACTOR = 3.0
PLAN_GRAD = 1.0


# Chance: a 10-class guess errs 0.9; diverged trials count as that in best-over-lr and plots.
# Rules "3": a point sits at chance when its mean test error is >= CHANCE_ERROR - CHANCE_MARGIN;
# a cell with every point there says nothing about the theory (v2's adam/none control was
# "FAIL" at 0.89-0.91 error).
CHANCE_ERROR = 0.9
CHANCE_MARGIN = 0.03

# The iso-line test (rules "3", docs/theory.md#iso-lines): points whose lr^(1/s)*l2 agree to
# ISO_RTOL (relative) lie on one diagonal; a diagonal needs >= ISO_MIN_LR distinct lr values,
# and the test >= ISO_MIN_DIAGONALS such diagonals.
ISO_RTOL = 1e-6
ISO_MIN_LR = 2
ISO_MIN_DIAGONALS = 2


@dataclass(frozen=True)
class Version:
    """What a rules version changes beyond the shared constants above."""

    name: str
    outcome_evals: int  # outcome = mean of each trial's last this-many evaluations
    chance_guard: bool  # every point at chance -> INSUFFICIENT
    train_loss: bool  # judge the train-loss collapse too
    iso_test: bool  # run the direct iso-line test
    forecast_fallback: bool = False  # unsettled cell: judged on its forecast-ready points


VERSIONS = {
    "2": Version("2", outcome_evals=1, chance_guard=False, train_loss=False, iso_test=False),
    "3": Version("3", outcome_evals=3, chance_guard=True, train_loss=True, iso_test=True),
    "4": Version("4", outcome_evals=3, chance_guard=True, train_loss=True, iso_test=True,
                 forecast_fallback=True),
}


def version(name: str | Version = RULES_VERSION) -> Version:
    """The rules version by name (a Version is returned as is: a variant, analysis.rule_changes);
    ValueError naming the known ones."""
    if isinstance(name, Version):
        return name
    if name not in VERSIONS:
        raise ValueError(f"unknown rules version {name!r}; known: {sorted(VERSIONS)}")
    return VERSIONS[name]


def thresholds(name: str = RULES_VERSION) -> dict:
    """Every rule constant of a version by name, for collapse.json (version "2": exactly the
    keys it had, so the shipped files compare equal)."""
    v = version(name)
    extra = {} if name == "2" else {
        "outcome_evals": v.outcome_evals, "chance_guard": v.chance_guard,
        "train_loss": v.train_loss, "iso_test": v.iso_test, "chance_margin": CHANCE_MARGIN,
        "iso_rtol": ISO_RTOL, "iso_min_lr": ISO_MIN_LR, "iso_min_diagonals": ISO_MIN_DIAGONALS}
    if v.forecast_fallback:  # absent before "4", so earlier collapse.json files compare equal
        extra["forecast_fallback"] = True
    return {"rules_version": v.name, "alpha": ALPHA, "norm_drift_max": NORM_DRIFT_MAX,
            "angle_drift_max": ANGLE_DRIFT_MAX, "sensitivity_factors": list(SENSITIVITY_FACTORS),
            "min_points": MIN_POINTS, "min_distinct": MIN_DISTINCT, "r2_min": R2_MIN,
            "gain_min": GAIN_MIN, "s_tolerance": S_TOLERANCE,
            "candidate_slopes": list(CANDIDATE_SLOPES), "balance_band": list(BALANCE_BAND),
            "plan_relax_factor": PLAN_RELAX_FACTOR, "plan_grad": PLAN_GRAD} | extra


def rule_texts(settings) -> list[str]:
    """The rules and thresholds of every verdict, in words, headed by the rules version
    (settings: analysis.collapse.CheckSettings; the report prints these)."""
    lo, hi = BALANCE_BAND
    factors = ", ".join(f"{f:g}" for f in SENSITIVITY_FACTORS)
    eq_rule = {
        "measured": f"Equilibrium rule (measured): a point (lr, l2 > 0) is used when the median "
                    "over its non-diverged seeds of each trial's last-epoch drifts, the largest "
                    "over conv layers, are small: norm drift = |ln(||w||_E/||w||_E-1)| per step"
                    " x theory.relaxation_steps (how far ln ||w|| would still move in one "
                    f"relaxation time at the last epoch's pace) <= {NORM_DRIFT_MAX:g}, and "
                    "angle drift = |change of ln(measured/predicted angular update)| over the "
                    f"last epoch <= {ANGLE_DRIFT_MAX:g} (where a prediction exists). Trials "
                    "with fewer than two measured epochs have no drift: not equilibrated. The "
                    f"sensitivity table scales both thresholds by {factors} and shows the "
                    "rules-version-1 relaxation rule and all l2 > 0 points.",
        "relaxation": "Equilibrium rule (EXPLORATION, rules version 1): a point is used when "
                      "relaxation_steps <= the training budget in steps.",
        "all": "Equilibrium rule (EXPLORATION): every l2 > 0 point is used."}[settings.equilibrium]
    return [
        f"Rules version {settings.rules} (analysis/rules.py), fixed before the data they "
        "judge.", *version_rules(settings.rules),
        f"Diverged trials are drawn (red x, hatched) at test error {CHANCE_ERROR} (chance) and"
        " count as such for best-over-lr, but are left out of every fit and test: divergence"
        " happens early, before any equilibrium, so the theory says nothing about it. A point"
        " with some seeds diverged uses its other seeds; one with all seeds diverged is listed"
        " as such. Failed and unfinished trials are left out (listed under Skipped).",
        eq_rule,
        "Collapse fit: for each s in [-1, 3] (step 0.01, then parabolic refinement), a cubic "
        f"regression spline (up to {MAX_DOF} coefficients, at most one per {POINTS_PER_DOF} "
        "points and fewer than the distinct x values) in x = log(lr) + s*log(l2) is fitted to"
        " the per-point mean test error; s maximises R^2. The lr-only and l2-only models are "
        "the same spline in log(lr) or log(l2).",
        f"Interval: {100 * CI_LEVEL:g}% percentile bootstrap ({settings.n_boot} replicates, "
        f"RNG seed {settings.seed}): 'seeds' (median point with >= 2 seeds) redraws each "
        "point's seeds from the cell's pooled within-point deviations; 'residuals' (one seed)"
        " resamples the 1-D model's residuals.",
        f"Lack of fit (>= 2 seeds): F-test of the fitted 1-D model (spline + s) against free "
        f"point means, with the seed-to-seed variance as noise; significant when p < "
        f"{ALPHA:g}.",
        f"Collapse verdict: INSUFFICIENT with fewer than {MIN_POINTS} equilibrated points or"
        f" fewer than {MIN_DISTINCT} distinct lr or l2 values. With >= 2 seeds: PASS when "
        f"the theory's s lies in the interval widened by {S_TOLERANCE:g} on each side, the "
        f"1-D model shows no significant lack of fit, its adjusted R^2 >= {R2_MIN} and it "
        f"removes >= {GAIN_MIN:g} of the variance the better of the lr-only and l2-only "
        "models leaves; FAIL when any of these fails; INSUFFICIENT instead of PASS (or of the"
        " s-only FAIL) when the widened interval holds both s = 1/2 and s = 1. With one seed "
        "the lack of fit cannot be tested: DESCRIPTIVE, and the 'descriptive' column says what"
        " the other criteria give. norm=none is the control: FAIL is the expected outcome.",
        "Projection flatness: among l2 below the large-l2 regime, is test error a function of"
        " lr alone? With >= 2 seeds: F-test of the lr-only model against free point means "
        "(the l2 main effect and its interaction with lr against the seed noise); with one "
        "seed: two-way ANOVA without replicates (l2 main effect against the lr x l2 "
        f"interaction). FAIL when the l2 effect is significant (p < {ALPHA:g}); PASS when "
        "it is not and the lr effect, tested the same way, is (the design can detect an "
        "effect); INSUFFICIENT otherwise or with fewer than 2 distinct lr or l2 values. "
        "l2_effect is the RMS size of the fitted l2 effect in test error; the spread ratio of"
        " rules version 1 is reported, not judged. Large l2: "
        + (f"l2 > {settings.large_l2:g} (EXPLORATION: set by --large-l2)."
           if settings.large_l2 is not None
           else "2*l2 above the median measured per-unit gradient norm at unit weight norm "
                "(conv layers, last epoch), i.e. the L2 gradient outweighs the loss gradient."),
        "Equilibrium: for equilibrated, non-diverged points, the norm balance per conv layer ="
        " (measured/predicted angular update)^k at the last epoch, k = 2 (sgd, momentum, "
        "adamw) or 3 (adam with coupled L2): the ratio of the update's growth of ||w||^2 to "
        "L2's shrinkage in the theory's balance (1 at the predicted equilibrium); averaged "
        f"over conv layers and seeds; per cell PASS when the median lies in [{lo:.3g}, "
        f"{hi:.3g}], the same band for every optimizer. The angular update is the whole "
        "layer's (all groups flattened), RMS over the epoch's steps; results written before"
        " issue 10 hold the mean over groups of per-group angles instead.",
    ]


def version_rules(name: str) -> list[str]:
    """What rules version `name` adds to the rules below, in words (none for "2")."""
    v = version(name)
    if name == "2":
        return []
    guard = CHANCE_ERROR - CHANCE_MARGIN
    return [
        f"Outcome (rules {name}): each trial's test error is the mean over its last "
        f"{v.outcome_evals} evaluations (epochs) that did not diverge, not the final one alone;"
        " every check and figure below uses it.",
        f"Chance guard: a collapse cell whose every non-diverged point has mean test error >= "
        f"{guard:g} (chance {CHANCE_ERROR:g} less {CHANCE_MARGIN:g}) is INSUFFICIENT: it "
        "shows nothing the theory speaks of.",
        "Train-loss collapse: the same fit, interval, lack of fit and verdict with the mean "
        f"train loss of the last {v.outcome_evals} epochs as the outcome (diverged trials left"
        " out as before); for the fully scale-invariant network the theory predicts it exactly.",
        f"Iso-line test: points whose lr^(1/s)*l2 (s the theory's slope) agree to {ISO_RTOL:g}"
        f" lie on one diagonal; diagonals with >= {ISO_MIN_LR} distinct lr count, and the "
        f"test needs >= {ISO_MIN_DIAGONALS}. Against the seed noise (pure error of the point "
        "means): along = F-test of one common slope in log2(lr) added to one mean per diagonal;"
        " across = F-test of the diagonal means against one grand mean. FAIL when the along "
        f"slope is significant (p < {ALPHA:g}); PASS when it is not and the across test is; "
        "INSUFFICIENT otherwise, with one seed per point, or under the chance guard. iso_along"
        " is |slope| x the mean log2(lr) span of a diagonal, iso_across the range of the "
        "diagonal means (outcome units).",
    ] + ([FALLBACK_TEXT] if v.forecast_fallback else [])


FALLBACK_TEXT = (
    "Forecast fallback (rules 4): in an update=l2 cell where the measured equilibrium rule "
    f"leaves fewer than {MIN_POINTS} non-diverged points (or fewer than {MIN_DISTINCT} "
    "distinct lr or l2 values) while the points whose budget holds "
    f"{PLAN_RELAX_FACTOR:g} relaxation times (theory.relaxation_steps with each point's measured"
    " gradient norm, i.e. the version-1 relaxation rule at factor "
    f"{PLAN_RELAX_FACTOR:g}) meet that count, the forecast-ready points are used instead, by "
    "every check of the cell (collapse, train-loss collapse, iso-lines, equilibrium); its rows "
    "say basis 'forecast'. norm=none controls are included (their expected verdict stays "
    "FAIL). The theory promised those points an equilibrium: a cell that does not settle "
    "is judged on that promise (its equilibrium check then shows how far from the predicted "
    "angle it is) instead of staying INSUFFICIENT.")

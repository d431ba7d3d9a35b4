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
Version "2" stays selectable (`--rules 2`) so the shipped v2 verdicts reproduce.
"""
from __future__ import annotations

from dataclasses import dataclass

RULES_VERSION = "3"  # the default; every version in VERSIONS can be chosen

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


VERSIONS = {
    "2": Version("2", outcome_evals=1, chance_guard=False, train_loss=False, iso_test=False),
    "3": Version("3", outcome_evals=3, chance_guard=True, train_loss=True, iso_test=True),
}


def version(name: str = RULES_VERSION) -> Version:
    """The rules version by name; ValueError naming the known ones."""
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
    return {"rules_version": v.name, "alpha": ALPHA, "norm_drift_max": NORM_DRIFT_MAX,
            "angle_drift_max": ANGLE_DRIFT_MAX, "sensitivity_factors": list(SENSITIVITY_FACTORS),
            "min_points": MIN_POINTS, "min_distinct": MIN_DISTINCT, "r2_min": R2_MIN,
            "gain_min": GAIN_MIN, "s_tolerance": S_TOLERANCE,
            "candidate_slopes": list(CANDIDATE_SLOPES), "balance_band": list(BALANCE_BAND),
            "plan_relax_factor": PLAN_RELAX_FACTOR, "plan_grad": PLAN_GRAD} | extra

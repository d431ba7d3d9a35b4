"""The verdict rules: every threshold of every check, in one place, with a version.

The rules are fixed before the data they judge. Any change bumps RULES_VERSION, is stated in
the README, and every report and collapse.json records the version it was judged under.
Version history:
- "1": relaxation-time equilibrium rule (x --relax-factor), adjusted R^2 and gain for the
  collapse, spread ratio <= 0.3 for projection, [2/3, 3/2] on the angle ratio.
- "2" (issue 10): equilibrium measured from each run's last epoch; collapse lack of fit
  tested against seed noise; projection's l2 effect tested against noise; the equilibrium
  band on the norm balance; one-seed collapse verdicts descriptive.
"""
from __future__ import annotations

RULES_VERSION = "2"

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


def thresholds() -> dict:
    """Every rule constant by name, for collapse.json."""
    return {"rules_version": RULES_VERSION, "alpha": ALPHA, "norm_drift_max": NORM_DRIFT_MAX,
            "angle_drift_max": ANGLE_DRIFT_MAX, "sensitivity_factors": list(SENSITIVITY_FACTORS),
            "min_points": MIN_POINTS, "min_distinct": MIN_DISTINCT, "r2_min": R2_MIN,
            "gain_min": GAIN_MIN, "s_tolerance": S_TOLERANCE,
            "candidate_slopes": list(CANDIDATE_SLOPES), "balance_band": list(BALANCE_BAND),
            "plan_relax_factor": PLAN_RELAX_FACTOR, "plan_grad": PLAN_GRAD}

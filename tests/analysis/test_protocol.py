"""Protocol 5 (analysis/protocol.py, analysis/checks/): the Holm adjustment and the
equivalence tests by hand, the slope interval's coverage, the premise against the prediction,
every threshold that picks a check's points on both sides, edge robustness, determinism,
diverged trials at chance, the sensitivity table, the design's spline dof, the wording."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from designs import SGD_LRS, SGD_PRODUCTS, cell, checks_for, diagonals, rising, u_shape, unsettled
from scipy import stats

from analysis import protocol
from analysis.checks import premise, slope
from analysis.checks.inference import equivalence, holm
from analysis.collapse import robust, run_checks
from analysis.export import to_json
from analysis.load import load_results
from analysis.synthetic import SyntheticSweep, trial_rows, write_sweep, write_trial
from l2bn.store import ResultStore

REPO = Path(__file__).resolve().parents[2]
ISO = diagonals(SGD_LRS, SGD_PRODUCTS)


# ---- a. Holm ----

def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04, then the
    # running maximum (0.04 -> 0.06), back in the input order
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN stays NaN and is not counted: two finite p-values, x2 and x1
    out = holm([0.01, float("nan"), 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


# ---- b. equivalence ----

@pytest.mark.parametrize("effect, se, df", [(0.01, 0.006, 10), (0.05, 0.01, 8), (0.001, 0.004, 20),
                                            (-0.05, 0.01, 8)])
def test_equivalence_by_hand(effect, se, df):
    m = 0.02
    eq = equivalence(effect, se, df, m)
    t = stats.t(df)
    # TOST: H0 effect <= -m (reject for large (effect + m)/se), H0 effect >= m; the larger p
    assert eq.p_equiv == pytest.approx(max(t.sf((effect + m) / se), t.cdf((effect - m) / se)))
    # outside: H0 |effect| <= m, the more extreme side, Bonferroni over the two
    assert eq.p_out == pytest.approx(min(1.0, 2 * min(t.cdf((effect + m) / se),
                                                      t.sf((effect - m) / se))))
    q = t.ppf(0.95)
    assert (eq.ci_low, eq.ci_high) == pytest.approx((effect - q * se, effect + q * se))


def test_equivalence_values_that_decide_verdicts():
    inside, outside = equivalence(0.001, 0.004, 20, 0.02), equivalence(0.05, 0.01, 8, 0.02)
    assert inside.p_equiv < 1e-4 and inside.p_out == 1.0
    assert outside.p_out == pytest.approx(2 * stats.t.sf(3.0, 8)) and outside.p_out < 0.05
    assert outside.p_equiv > 0.99
    unknown = equivalence(0.01, 0.0, 5, 0.02)  # no spread: no test
    assert math.isnan(unknown.p_equiv) and math.isnan(unknown.p_out)


def flat(o, n, u, lr, l2):
    return u_shape(math.log10(lr), -1)


@pytest.mark.parametrize("error, noise, verdict", [
    (flat, 0.005, "PASS"),
    # 0.1 of final error over the two decades of l2 (0.075 of the outcome): outside +-0.02
    (lambda o, n, u, lr, l2: flat(o, n, u, lr, l2) + 0.05 * (math.log10(l2) + 4), 0.005, "FAIL"),
    (flat, 0.05, "INSUFFICIENT"),  # flat, but too noisy to show it
])
def test_projection_three_outcomes(tmp_path, error, noise, verdict):
    r = cell(checks_for(tmp_path, error, noise=noise, updates=("projection",)).projection,
             "sgd/batch/projection")
    assert r["verdict"] == verdict, r["reason"]
    if verdict == "INSUFFICIENT":
        assert r["l2_p_equiv_adj"] >= 0.05 and r["l2_p_out_adj"] >= 0.05
        assert r["l2_effect_low"] < -0.02 or r["l2_effect_high"] > 0.02  # the interval is wide


@pytest.mark.parametrize("error, noise, verdict", [
    (rising, 0.005, "PASS"),  # a function of lr*l2: flat along the diagonals
    (lambda o, n, u, lr, l2: 0.3 + 0.05 * math.log2(lr / 0.025), 0.005, "FAIL"),  # 0.11 along
    (rising, 0.05, "INSUFFICIENT"),
])
def test_iso_lines_three_outcomes(tmp_path, error, noise, verdict):
    r = cell(checks_for(tmp_path, error, noise=noise, points=ISO).collapse)
    assert r["iso_verdict"] == verdict, r["iso_reason"]
    if verdict == "INSUFFICIENT":
        assert r["iso_p_equiv_adj"] >= 0.05 and r["iso_p_out_adj"] >= 0.05


# ---- c. the slope interval's coverage ----

@pytest.mark.parametrize("s, power, products", [(1.0, 1, (1e-3, 2e-3, 4e-3)),
                                                (0.5, 2, (2.5e-5, 5e-5, 1e-4))])
def test_slope_interval_covers_the_true_s(s, power, products):
    """200 noisy replicates (3 seeds, noise 0.01) of a 12-point iso design whose outcome is
    linear in log(lr) + s*log(l2): the 95% profile interval holds s in 90-99% of them
    (seeded: 191/200 for s = 1, 192/200 for s = 1/2)."""
    lr, l2 = np.array(diagonals(SGD_LRS, products, power)).T
    x = np.log(lr) + s * np.log(l2)
    truth = 0.2 + 0.05 * (x - x.mean())
    dof = slope.design_dof(np.log(lr), np.log(l2))
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(200):
        fit = slope.fit_slope(lr, l2, [m + 0.01 * rng.standard_normal(3) for m in truth], dof, s)
        hits += fit.ci_low <= s <= fit.ci_high
    assert 0.90 <= hits / 200 <= 0.99, hits


# ---- d. premise against prediction ----

def test_unsettled_cell_is_not_equilibrated_and_keeps_a_descriptive_slope(tmp_path):
    """Every trial's last-epoch angle doubles (angle drift ln 2 > 0.1) although 20,000 steps
    per epoch hold far more than 3 relaxation times: the premise failed where it should hold."""
    checks = run_checks(unsettled(tmp_path, rising), sensitivity=False)
    assert not checks.points["equilibrated"].any() and checks.points["forecast_ready"].all()
    r = cell(checks.collapse)
    for check in (r, cell(checks.collapse_train), cell(checks.equilibrium_cells)):
        assert check["verdict"] == premise.NOT_EQUILIBRATED, check["reason"]
        assert check["verdict_by_edge"] == [premise.NOT_EQUILIBRATED] * 3
    assert r["iso_verdict"] == premise.NOT_EQUILIBRATED
    assert (r["n_points"], r["n_ready"]) == (0, 12)
    # the descriptive slope on the 12 ready points, shown but kept out of the family
    assert abs(r["s"] - 1) < 0.1 and r["ci_low"] < r["s"] < r["ci_high"]
    assert f"descriptive slope on them s = {r['s']:.3f}" in r["reason"]
    assert "slope_p_equiv" not in r or np.isnan(r["slope_p_equiv"])
    assert len(checks.family) == 0
    # balance on the ready points: (2^2 + 1 + 1) / 3 = 2 for sgd (conv1's ratio doubled)
    assert cell(checks.equilibrium_cells)["balance_median"] == pytest.approx(2.0)


def test_unsettled_cell_with_too_short_a_budget_is_insufficient(tmp_path):
    checks = run_checks(unsettled(tmp_path, rising, steps_per_epoch=50), sensitivity=False)
    assert not checks.points["forecast_ready"].any()
    r = cell(checks.collapse)
    assert r["verdict"] == r["iso_verdict"] == "INSUFFICIENT"
    assert "the budget is too short" in r["reason"] and np.isnan(r.get("s", np.nan))
    assert cell(checks.collapse_train)["verdict"] == "INSUFFICIENT"
    assert cell(checks.equilibrium_cells)["verdict"] == "INSUFFICIENT"


# ---- e. thresholds on both sides ----

def test_forecast_ready_on_both_sides_of_relax_factor():
    assert premise.RELAX_FACTOR == 3.0
    relax = 1000.0
    p = pd.DataFrame({"l2": [1e-3, 1e-3, 0.0], "relax_steps": [relax, relax, np.inf],
                      "budget_steps": [3.0 * relax * 1.01, 3.0 * relax * 0.99, 1e9]})
    assert premise.forecast_ready(p).tolist() == [True, False, False]


@pytest.mark.parametrize("column", ["norm_drift", "angle_drift"])
@pytest.mark.parametrize("factor", premise.EDGE_FACTORS)
def test_equilibrated_on_both_sides_of_each_drift_threshold(column, factor):
    assert premise.NORM_DRIFT_MAX == premise.ANGLE_DRIFT_MAX == 0.10
    assert premise.EDGE_FACTORS == pytest.approx((2 / 3, 1.0, 1.5))
    edge = factor * 0.10
    p = pd.DataFrame({"l2": [1e-3] * 2, "norm_drift": [0.0] * 2, "angle_drift": [0.0] * 2})
    p[column] = [edge * 0.99, edge * 1.01]  # e.g. 0.099 / 0.101 at 1, 0.1485 / 0.1515 at 3/2
    assert premise.equilibrated(p, factor).tolist() == [True, False]


def test_equilibrated_needs_a_norm_drift_and_l2_but_not_an_angle():
    p = pd.DataFrame({"l2": [1e-3, 1e-3, 0.0], "norm_drift": [0.01, np.nan, 0.01],
                      "angle_drift": [np.nan, 0.0, 0.0]})
    assert premise.equilibrated(p).tolist() == [True, False, False]


def test_robust_needs_every_edge_variant_to_agree():
    def v(verdict, reason=""):
        return {"verdict": verdict, "reason": reason or f"{verdict} because"}
    assert robust([v("PASS"), v("PASS", "as stated"), v("PASS")]) == ("PASS", "as stated")
    verdict, reason = robust([v("FAIL"), v("PASS", "as stated"), v("PASS")])
    assert verdict == "INSUFFICIENT"
    assert reason == ("not robust to the equilibrium filter's edge (FAIL at x0.667, PASS at x1, "
                      "PASS at x1.5); as stated: as stated")
    assert robust([v("PASS"), v("PASS"), v(premise.NOT_EQUILIBRATED)])[0] == "INSUFFICIENT"


def test_a_verdict_that_changes_with_the_edge_is_not_robust(tmp_path):
    """Angle drift 0.08 at every point: above the strict edge 0.067, below 0.1 and 0.15."""
    checks = run_checks(unsettled(tmp_path, rising, jump=math.exp(0.08)), sensitivity=False)
    r = cell(checks.collapse)
    assert r["verdict_by_edge"] == [premise.NOT_EQUILIBRATED, "PASS", "PASS"]
    assert r["verdict"] == "INSUFFICIENT" and r["reason"].startswith("not robust")
    assert r["iso_verdict_by_edge"] == [premise.NOT_EQUILIBRATED, "PASS", "PASS"]
    assert r["iso_verdict"] == "INSUFFICIENT" and r["iso_reason"].startswith("not robust")
    assert r["n_points"] == 12  # the nominal variant's numbers are shown
    eq = cell(checks.equilibrium_cells)
    assert eq["verdict"] == "INSUFFICIENT" and eq["reason"].startswith("not robust")


# ---- f. determinism ----

def test_same_sweep_gives_identical_json_whatever_the_global_rng(tmp_path):
    write_sweep(tmp_path, SyntheticSweep(rising, points=ISO, steps_per_epoch=20_000))
    out = []
    for seed in (1, 2):
        np.random.seed(seed)
        results = load_results(str(tmp_path))
        out.append(to_json(run_checks(results), results))
    assert out[0] == out[1]
    assert '"verdict": "PASS"' in out[0]


# ---- g. a diverged trial counts at chance ----

def test_a_diverged_seed_counts_at_chance_in_the_mean_and_not_in_the_fit(tmp_path):
    sweep = SyntheticSweep(lambda *_: 0.3, lrs=(0.1, 0.2), l2s=(1e-3, 2e-3), steps_per_epoch=20_000)
    write_sweep(tmp_path, sweep)
    cfg = next(c for c in sweep.configs() if (c.lr, c.l2, c.seed) == (0.2, 2e-3, 0))
    write_trial(ResultStore(str(tmp_path.parent), tmp_path.name),  # seed 0 diverges at the end
                trial_rows(cfg, 0.3, True, sweep.steps_per_epoch))
    results = load_results(str(tmp_path))
    trials = results.trials.set_index("trial_id")
    assert trials.loc[cfg.trial_id, "error_plot"] == 0.9  # not its last finite test error
    assert trials.loc[cfg.trial_id, "test_error"] < 0.9
    h = results.history.sort_values("epoch")
    ok = h[~h["diverged"].astype(bool)].groupby("trial_id")["test_error"].apply(
        lambda e: e.tail(3).mean())  # each trial's outcome by hand
    point = trials[(trials["lr"] == 0.2) & (trials["l2"] == 2e-3)].index
    others = [ok[t] for t in point if t != cfg.trial_id]
    checks = run_checks(results, sensitivity=False)
    row = checks.points.set_index(["lr", "l2"]).loc[(0.2, 2e-3)]
    assert (row["n_seeds"], row["n_diverged"]) == (3, 1)
    assert row["error_mean"] == pytest.approx((0.9 + sum(others)) / 3, rel=1e-12)
    assert row["fit_mean"] == pytest.approx(sum(others) / 2, rel=1e-12)
    assert sorted(row["errors"]) == pytest.approx(sorted(others))


# ---- h. the committed wording ----

def test_docs_protocol_is_the_generated_wording():
    assert (REPO / "docs" / "protocol.md").read_text() == protocol.markdown()


# ---- i. the sensitivity table ----

def test_sensitivity_table_varies_the_dof_around_the_design(tmp_path):
    checks = checks_for(tmp_path, rising, points=ISO, sensitivity=True)
    r = cell(checks.collapse)
    assert r["dof"] == 3  # 3 diagonals: 3 distinct x at s = 1
    t = checks.sensitivity
    for name, table in (("collapse", checks.collapse), ("collapse_train", checks.collapse_train)):
        rows = t[(t["cell"] == "sgd/batch/l2") & (t["check"] == name)].set_index("variant")
        assert sorted(rows.index) == ["dof +1", "dof -1", "dof as designed"]
        assert rows["dof"].to_dict() == {"dof -1": 2, "dof +1": 4, "dof as designed": 3}
        designed, judged = rows.loc["dof as designed"], cell(table)
        assert (designed["s"], designed["verdict"]) == (judged["s"], judged["verdict"])
        assert (rows["n_points"] == 12).all()
        assert rows.loc["dof +1", "s"] != designed["s"]  # a refit, not a copy


# ---- j. the spline dof comes from the design ----

def test_spline_dof_is_fixed_by_the_design_not_the_used_points(tmp_path):
    """4 diagonals x 3 lr = 12 points (dof min(6, 4 distinct x, 12 // 3) = 4); 3 points fail
    the premise, and the 9 left (which alone would give 9 // 3 = 3) are fitted with dof 4."""
    pts = diagonals((0.05, 0.1, 0.2), (1e-3, 2e-3, 4e-3, 8e-3))
    lr, l2 = np.array(pts).T
    full = slope.design_dof(np.log(lr), np.log(l2))
    results = unsettled(tmp_path, rising, points=pts,
                        where=lambda t: (t["lr"] == 0.2) & (t["l2"] <= 0.02))
    r = cell(run_checks(results, sensitivity=False).collapse)
    assert sorted(r["excluded"]) == [[0.2, 0.005], [0.2, 0.01], [0.2, 0.02]]
    used = ~((lr == 0.2) & (l2 <= 0.02))
    assert (full, slope.design_dof(np.log(lr[used]), np.log(l2[used]))) == (4, 3)
    assert (r["n_points"], r["dof"]) == (9, full)
    assert r["verdict"] == "PASS", r["reason"]


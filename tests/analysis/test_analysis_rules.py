"""Rules version 2 (analysis/rules.py) on synthetic sweeps with a known answer: lack of fit
against seed noise, a small true l2 effect under projection, one-seed verdicts, the
sensitivity table, the norm balance band, and the F distribution."""
import math

import numpy as np
import pytest

from analysis import rules as R
from analysis.collapse import CheckSettings, run_checks
from analysis.load import load_results
from analysis.stats import f_sf, two_way
from analysis.synthetic import SyntheticSweep, write_sweep

LRS = tuple(np.logspace(-2, 0, 5))
L2S = tuple(np.logspace(-4, -2, 5))


def u_shape(z: float, center: float) -> float:
    return 0.1 + 0.05 * (z - center) ** 2


def checks_for(tmp_path, error, sensitivity=False, **sweep):
    sweep.setdefault("steps_per_epoch", 20_000)
    write_sweep(tmp_path, SyntheticSweep(error, **sweep))
    return run_checks(load_results(str(tmp_path)), CheckSettings(n_boot=100), sensitivity)


def row(frame, cell):
    rows = frame[frame["cell"] == cell]
    assert len(rows) == 1
    return rows.iloc[0]


def checkerboard(lr: float, l2: float) -> float:
    """+-0.01 alternating over the (lr, l2) grid: no function of lr*l2 can follow it."""
    i, j = round(2 * math.log10(lr)), round(2 * math.log10(l2))
    return 0.01 * (-1) ** (i + j)


def test_lack_of_fit_is_detected_with_three_seeds(tmp_path):
    checks = checks_for(tmp_path, lambda o, n, u, lr, l2: u_shape(math.log10(lr * l2), -3.5)
                        + checkerboard(lr, l2))
    r = row(checks.collapse, "sgd/batch/l2")
    assert r["lof_p"] < 1e-3 and r["verdict"] == "FAIL" and "lack of fit" in r["reason"]
    assert r["r2adj_1d"] > R.R2_MIN  # the rules-version-1 criteria alone ...
    assert r["gain"] > R.GAIN_MIN  # ... would not have caught it


def test_true_collapse_passes_and_one_seed_is_descriptive(tmp_path):
    def error(o, n, u, lr, l2):
        return u_shape(math.log10(lr * l2), -3.5)
    checks = checks_for(tmp_path / "a", error)
    r = row(checks.collapse, "sgd/batch/l2")
    assert r["verdict"] == "PASS" and r["lof_p"] > R.ALPHA
    one = row(checks_for(tmp_path / "b", error, seeds=(0,)).collapse, "sgd/batch/l2")
    assert (one["verdict"], one["descriptive"], one["bootstrap"]) == ("DESCRIPTIVE", "PASS", "residuals")
    assert one["lof_p"] is None or np.isnan(one["lof_p"])


def test_small_true_l2_effect_under_projection_is_detected(tmp_path):
    """0.006 of test error per decade of l2 (noise 0.005 per seed, 3 seeds): the ANOVA finds
    it, while the rules-version-1 spread ratio would have called the cell flat."""
    def error(o, n, u, lr, l2):
        return u_shape(math.log10(lr), -1) + 0.006 * (math.log10(l2) + 3)
    checks = checks_for(tmp_path, error, updates=("projection",))
    r = row(checks.projection, "sgd/batch/projection")
    assert r["ratio"] < 0.3  # version 1: PASS
    assert r["verdict"] == "FAIL" and r["l2_p"] < 1e-3
    # the RMS l2 effect is the std of 0.006 * (log10 l2 + 3) over l2 = 1e-4 .. 1e-2
    assert r["l2_effect"] == pytest.approx(0.006 * np.std(np.log10(L2S)), rel=0.3)


def test_flat_projection_passes(tmp_path):
    checks = checks_for(tmp_path, lambda o, n, u, lr, l2: u_shape(math.log10(lr), -1),
                        updates=("projection",))
    r = row(checks.projection, "sgd/batch/projection")
    assert r["verdict"] == "PASS" and r["l2_p"] > R.ALPHA and r["lr_p"] < 1e-6


def test_two_way_without_replicates_by_hand():
    """One seed, a 3 x 3 additive layout plus interaction noise: F of the l2 main effect =
    (SS_l2/2) / (SS_interaction/4), computed from the marginal means by hand."""
    rng = np.random.default_rng(0)
    lr, l2 = (a.ravel() for a in np.meshgrid([1.0, 2.0, 3.0], [10.0, 20.0, 30.0], indexing="ij"))
    y = 0.3 * np.log(lr) + 0.05 * np.log(l2) + 0.01 * rng.standard_normal(9)
    table = y.reshape(3, 3)
    grand = table.mean()
    ss_l2 = 3 * ((table.mean(0) - grand) ** 2).sum()
    resid = table - table.mean(1, keepdims=True) - table.mean(0, keepdims=True) + grand
    f = (ss_l2 / 2) / ((resid**2).sum() / 4)
    tests = two_way(y, lr, l2)
    assert not tests.replicated
    assert tests.l2.f == pytest.approx(f, rel=1e-9) and (tests.l2.df1, tests.l2.df2) == (2, 4)
    assert tests.l2.p == pytest.approx(f_sf(f, 2, 4))


def test_f_distribution_tail():
    # d1 = 2 has a closed form: P(F > f) = (d2 / (d2 + 2 f))^(d2/2)
    for f, d2 in [(4.103, 10), (0.5, 3), (20.0, 7)]:
        assert f_sf(f, 2, d2) == pytest.approx((d2 / (d2 + 2 * f)) ** (d2 / 2), rel=1e-10)
    assert f_sf(2.228**2, 1, 10) == pytest.approx(0.05, abs=2e-4)  # t_{0.975,10} = 2.228


def test_sensitivity_table_lists_every_rule(tmp_path):
    checks = checks_for(tmp_path, lambda o, n, u, lr, l2: u_shape(math.log10(lr * l2), -3.5),
                        sensitivity=True, steps_per_epoch=1000)
    t = checks.sensitivity
    assert list(zip(t["rule"], t["factor"], strict=True)) == [
        ("measured", 0.5), ("measured", 1.0), ("measured", 2.0), ("relaxation", 1.0),
        ("relaxation", 3.0), ("all", 1.0)]  # relaxation x3: the forecast basis of rules 4
    assert list(t["used"]) == [False, True, False, False, False, False]
    used = row(checks.collapse, "sgd/batch/l2")
    assert t.loc[t["used"], "n_points"].item() == used["n_points"]
    assert t.loc[t["rule"] == "all", "n_points"].item() == 25
    n = t.loc[t["rule"] == "measured", "n_points"].to_numpy()
    assert n[0] <= n[1] <= n[2]  # looser thresholds admit more points


def test_equilibrium_band_is_on_the_norm_balance(tmp_path):
    """Angle ratio 0.85: inside the rules-version-1 band [2/3, 3/2] on the angle, but the
    norm balance 0.85^3 = 0.61 (adam) and 0.85^2 = 0.72 (sgd) against the band [2/3, 3/2]."""
    write_sweep(tmp_path, SyntheticSweep(lambda *_: 0.2, optimizers=("sgd", "adam"), seeds=(0,),
                                         lrs=LRS[2:], l2s=L2S[2:], steps_per_epoch=20_000))
    results = load_results(str(tmp_path))
    for layer in ("conv1", "conv2", "conv3"):
        t = results.trials
        t[f"{layer}_angular_update"] = 0.85 * t[f"{layer}_pred_angular_update"]
    checks = run_checks(results, CheckSettings(n_boot=20), sensitivity=False)
    adam, sgd = (row(checks.equilibrium_cells, f"{o}/batch/l2") for o in ("adam", "sgd"))
    assert adam["balance_median"] == pytest.approx(0.85**3) and adam["verdict"] == "FAIL"
    assert sgd["balance_median"] == pytest.approx(0.85**2) and sgd["verdict"] == "PASS"


def test_dynamics_leaves_out_diverged_epochs(tmp_path):
    """History rows of a diverged epoch hold NaN metrics: figure 4 plots epochs 1-2 only."""
    from analysis import plots

    write_sweep(tmp_path, SyntheticSweep(lambda *_: 0.2, lrs=(3.0,), l2s=(1e-3,), seeds=(0,),
                                         diverge_lr=3.0))
    results = load_results(str(tmp_path))
    h = results.history
    assert h["diverged"].tolist() == [False, False, True]
    h.loc[h["diverged"], [c for c in h if c.startswith("conv")]] = np.nan  # as the trainer writes
    fig = plots.dynamics(h, [{"cell": "sgd/batch/l2", "lr": 3.0, "l2": 1e-3,
                              "trial_ids": list(results.trials["trial_id"])}])
    for ax in fig.axes[:3]:
        for line in ax.get_lines():
            assert list(line.get_xdata()) == [1, 2]


def test_plots_leave_global_matplotlib_state_alone():
    import subprocess
    import sys

    code = ("import matplotlib as m; before = (m.get_backend(), dict(m.rcParams));"
            "import analysis.plots, analysis.report; assert m.get_backend() == before[0];"
            "assert dict(m.rcParams) == before[1]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_paper_cell_can_be_decided():
    """The paper grid gives every collapse cell >= 6 points over >= 3 lr and l2 values that
    can equilibrate in 100 epochs (rules version 2's forecast; adamw used to have 2 l2)."""
    from analysis.plan import plan_cells
    from l2bn.grid import load_grid

    table = plan_cells(load_grid("paper").configs())
    assert len(table) == 20 and table["decidable"].all(), table[~table["decidable"]]
    sgd = table[(table["optimizer"] == "sgd") & (table["norm"] == "batch")].iloc[0]
    # by hand: 3/(lr*2*l2) <= 39,000 steps <=> lr*l2 >= 3.85e-5 on lr 1e-3..1, l2 1e-6..1e-1
    assert (sgd["n_points"], sgd["n_lr"], sgd["n_l2"]) == (16, 7, 4)

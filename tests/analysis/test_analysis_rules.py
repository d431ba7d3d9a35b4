"""Protocol 5's collapse, projection and balance rules on synthetic sweeps with a known
answer: lack of fit against seed noise, one-seed verdicts, a small true l2 effect under
projection, the norm balance band, the F tail; and the figures' handling of divergence."""
import math

import numpy as np
import pytest
from designs import L2S, LRS, cell, checks_for, u_shape

from analysis.checks import balance, isolines, slope
from analysis.checks.inference import f_sf
from analysis.collapse import run_checks
from analysis.load import load_results
from analysis.synthetic import SyntheticSweep, write_sweep


def checkerboard(lr: float, l2: float) -> float:
    """+-0.01 alternating over the (lr, l2) grid: no function of lr*l2 can follow it."""
    i, j = round(2 * math.log10(lr)), round(2 * math.log10(l2))
    return 0.01 * (-1) ** (i + j)


def test_lack_of_fit_is_detected_with_three_seeds(tmp_path):
    # 200,000 steps per epoch: 24 points settle under every edge factor (at 20,000 the
    # strict edge keeps too few for the lack of fit to show, and the verdict is not robust)
    checks = checks_for(tmp_path, lambda o, n, u, lr, l2: u_shape(math.log10(lr * l2), -3.5)
                        + checkerboard(lr, l2), steps_per_epoch=200_000)
    r = cell(checks.collapse)
    assert r["lof_p_adj"] < 1e-3 and r["verdict_by_edge"] == ["FAIL"] * 3
    assert r["reason"].startswith("lack of fit against seed noise")
    assert r["r2adj_1d"] > 0.9  # R^2 alone would not have caught it


def test_true_collapse_passes_and_one_seed_is_descriptive(tmp_path):
    def error(o, n, u, lr, l2):
        return u_shape(math.log10(lr * l2), -3.5)
    r = cell(checks_for(tmp_path / "a", error).collapse)
    assert r["verdict"] == "PASS" and r["lof_p_adj"] > slope.ALPHA
    assert r["slope_p_equiv_adj"] < slope.ALPHA < r["slope_p_out_adj"]
    one = cell(checks_for(tmp_path / "b", error, seeds=(0,)).collapse)
    assert one["verdict"] == "DESCRIPTIVE" and "one seed per point" in one["reason"]
    assert abs(one["s"] - 1) < 0.1 and np.isnan(one["lof_p"]) and np.isnan(one["ci_low"])
    assert one["iso_verdict"] == "INSUFFICIENT" and "one seed" in one["iso_reason"]


def test_small_true_l2_effect_under_projection_is_measured(tmp_path):
    """0.02 of final test error per decade of l2 over 2 decades: the outcome (0.75 x final
    error + const, the mean of the 3 synthetic epochs) moves 0.75 * 0.04 = 0.03, outside the
    margin 0.02."""
    def error(o, n, u, lr, l2):
        return u_shape(math.log10(lr), -1) + 0.02 * (math.log10(l2) + 3)
    r = cell(checks_for(tmp_path, error, updates=("projection",)).projection,
             "sgd/batch/projection")
    assert r["l2_effect"] == pytest.approx(0.75 * 0.04, abs=0.003)
    assert r["l2_effect_low"] < r["l2_effect"] < r["l2_effect_high"]
    assert r["verdict"] == "FAIL" and r["l2_p_out_adj"] < 1e-3


def test_flat_projection_passes(tmp_path):
    r = cell(checks_for(tmp_path, lambda o, n, u, lr, l2: u_shape(math.log10(lr), -1),
                        updates=("projection",)).projection, "sgd/batch/projection")
    assert r["verdict"] == "PASS" and r["l2_p_equiv_adj"] < 1e-6 and r["lr_p"] < 1e-6
    assert -isolines.EQUIV_MARGIN < r["l2_effect_low"] < r["l2_effect_high"] < isolines.EQUIV_MARGIN


def test_f_distribution_tail():
    # d1 = 2 has a closed form: P(F > f) = (d2 / (d2 + 2 f))^(d2/2)
    for f, d2 in [(4.103, 10), (0.5, 3), (20.0, 7)]:
        assert f_sf(f, 2, d2) == pytest.approx((d2 / (d2 + 2 * f)) ** (d2 / 2), rel=1e-10)
    assert f_sf(2.228**2, 1, 10) == pytest.approx(0.05, abs=2e-4)  # t_{0.975,10} = 2.228
    assert math.isnan(f_sf(1.0, 2, 0)) and math.isnan(f_sf(float("nan"), 2, 5))


def test_equilibrium_band_is_on_the_norm_balance(tmp_path):
    """Angle ratio 0.85: the norm balance 0.85^3 = 0.61 (adam) and 0.85^2 = 0.72 (sgd)
    against the band [2/3, 3/2]."""
    write_sweep(tmp_path, SyntheticSweep(lambda *_: 0.2, optimizers=("sgd", "adam"), seeds=(0,),
                                         lrs=LRS[2:], l2s=L2S[2:], steps_per_epoch=20_000))
    results = load_results(str(tmp_path))
    for layer in ("conv1", "conv2", "conv3"):
        t = results.trials
        t[f"{layer}_angular_update"] = 0.85 * t[f"{layer}_pred_angular_update"]
    checks = run_checks(results, sensitivity=False)
    adam, sgd = (cell(checks.equilibrium_cells, f"{o}/batch/l2") for o in ("adam", "sgd"))
    assert adam["balance_median"] == pytest.approx(0.85**3) and adam["verdict"] == "FAIL"
    assert sgd["balance_median"] == pytest.approx(0.85**2) and sgd["verdict"] == "PASS"


@pytest.mark.parametrize("median, verdict", [(0.666, "FAIL"), (0.667, "PASS"), (1.499, "PASS"),
                                             (1.501, "FAIL"), (float("nan"), "INSUFFICIENT")])
def test_balance_band_on_both_sides(median, verdict):
    assert balance.BALANCE_BAND == pytest.approx((2 / 3, 3 / 2))
    assert balance.decide({"balance_median": median})[0] == verdict


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
    can equilibrate in 100 epochs (the premise's forecast)."""
    from analysis.plan import plan_cells
    from l2bn.grid import load_grid

    table = plan_cells(load_grid("paper").configs())
    assert len(table) == 20 and table["decidable"].all(), table[~table["decidable"]]
    sgd = table[(table["optimizer"] == "sgd") & (table["norm"] == "batch")].iloc[0]
    # by hand: 3/(lr*2*l2) <= 39,000 steps <=> lr*l2 >= 3.85e-5 on lr 1e-3..1, l2 1e-6..1e-1
    assert (sgd["n_points"], sgd["n_lr"], sgd["n_l2"]) == (16, 7, 4)

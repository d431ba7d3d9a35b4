"""The power report (analysis/power.py) on a design small enough to compute by hand."""
import numpy as np
import pytest
from scipy import stats

from analysis import power
from l2bn.config import TrialConfig


def test_projection_margin_by_hand():
    """2 lr x l2 {1e-3, 2e-3} x 3 seeds: within each lr, log2(l2) is -1/2, +1/2 about its
    mean, so Sxx = 12 * 1/4 = 3, se(slope) = sigma/sqrt(3) over a span of 1; 12 trials less 3
    parameters leave 9 dof; the family is projection's 2 p-values."""
    cfgs = [TrialConfig(update="projection", lr=lr, l2=l2, seed=s, data="synthetic")
            for lr in (0.05, 0.1) for l2 in (1e-3, 2e-3) for s in range(3)]
    assert power.family_size(cfgs) == 2
    row = power.power_table(cfgs, sigma=0.01, gain=0.03).iloc[0]
    se = 0.01 / np.sqrt(3)
    assert row["l2 effect se"] == pytest.approx(se)
    k = stats.t.ppf(1 - 0.05 / 2, 9) + stats.t.ppf(1 - power.BETA / 2, 9)
    assert row["l2 effect min margin"] == pytest.approx(k * se)
    assert row["decides"] == (k * se <= 0.02)


# synthetic data: 4 steps per epoch, so 4,000 epochs hold 3 relaxation times 1/(2*lr*l2)
# of every product >= 1e-4 (15,000 steps at 1e-4)
LONG = 4000


def test_more_seeds_shrink_the_slope_margin_as_one_over_sqrt_n():
    def margin(seeds):
        cfgs = [TrialConfig(lr=lr, l2=p / lr, seed=s, data="synthetic", epochs=LONG)
                for p in (1e-4, 2e-4, 4e-4) for lr in (0.025, 0.05, 0.1) for s in range(seeds)]
        return power.power_table(cfgs, sigma=0.01, gain=0.03).iloc[0]["slope se"]
    assert margin(12) == pytest.approx(margin(3) / 2)


def test_collapse_power_counts_only_the_points_forecast_to_equilibrate():
    """A relaxation takes 1/(2*lr*l2) steps: 5,000 at 1e-4. With 3,750 epochs (15,000 steps)
    only products >= 1e-4 hold 3 of them, so the 5-diagonal design has the iso-line standard
    error of its 3 upper diagonals alone, and the plan's dof 5 (15 design points // 3) needs 7
    ready points: 9 are, so it is decidable; at 1,875 epochs (7,500 steps) only the top two
    diagonals (6 points) are ready and it is not."""
    def design(products, epochs):
        return [TrialConfig(lr=lr, l2=p / lr, seed=s, data="synthetic", epochs=epochs)
                for p in products for lr in (0.025, 0.05, 0.1) for s in range(3)]
    full = power.power_table(design((2.5e-5, 5e-5, 1e-4, 2e-4, 4e-4), 3750), 0.01, 1.0).iloc[0]
    upper = power.power_table(design((1e-4, 2e-4, 4e-4), LONG), 0.01, 1.0).iloc[0]
    assert (full["n_points"], full["n_ready"], upper["n_ready"]) == (15, 9, 9)
    assert full["iso along se"] == pytest.approx(upper["iso along se"])
    assert full["decides"]
    short = power.power_table(design((2.5e-5, 5e-5, 1e-4, 2e-4, 4e-4), 1875), 0.001, 1.0).iloc[0]
    assert short["n_ready"] == 6 and not short["decides"]  # margins in reach, points not
    assert short["iso along min margin"] < 0.02 and short["slope min margin"] < 0.25


def test_measured_gradient_norms_replace_adams_assumed_one(tmp_path):
    """--grad: the median of the last epoch's per-layer gradient norms of a folder's Adam
    update=l2 trials, by hand; Adam's relaxation time grows as g^(2/3), so a point that the
    assumed g = 1 leaves short of 3 relaxation times is ready at the measured, smaller g."""
    from analysis.load import load_results
    from analysis.plan import forecast_ready, measured_grad
    from analysis.synthetic import SyntheticSweep, write_sweep

    write_sweep(tmp_path, SyntheticSweep(lambda *a: 0.3, optimizers=("adam", "sgd"),
                                         lrs=(1e-3, 2e-3), l2s=(1e-3,), seeds=(0, 1)))
    h = load_results(str(tmp_path)).history
    last = h[(h["optimizer"] == "adam") & (h["epoch"] == h["epoch"].max())]
    grad = measured_grad(str(tmp_path))
    assert grad == {k: pytest.approx(last[f"{k}_grad_norm_unit"].median())
                    for k in ("conv1", "conv2", "conv3")}
    cfg = TrialConfig(optimizer="adam", lr=4e-3, l2=1e-3, width=16, data="cifar10", epochs=2,
                      batch_size=32)
    small = dict.fromkeys(grad, 0.01)
    assert not forecast_ready(cfg) and forecast_ready(cfg, small)

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


def test_more_seeds_shrink_the_slope_margin_as_one_over_sqrt_n():
    def margin(seeds):
        cfgs = [TrialConfig(lr=lr, l2=p / lr, seed=s, data="synthetic")
                for p in (1e-4, 2e-4, 4e-4) for lr in (0.025, 0.05, 0.1) for s in range(seeds)]
        return power.power_table(cfgs, sigma=0.01, gain=0.03).iloc[0]["slope se"]
    assert margin(12) == pytest.approx(margin(3) / 2)

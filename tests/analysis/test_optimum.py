"""The best effective learning rate (analysis/optimum.py) on synthetic iso-line sweeps with a
known optimum: found inside its interval, shifted per lr when lr matters on its own, and
outside the design when error only rises."""
import math

import numpy as np
import pytest

from analysis.collapse import run_checks
from analysis.load import load_results
from analysis.optimum import bootstrap_means, fitted_minimum, minima_overlap
from analysis.synthetic import SyntheticSweep, write_sweep

LRS = (0.025, 0.05, 0.1)
PRODUCTS = (2e-4, 5e-4, 1e-3, 2e-3, 4e-3)


def optimum_table_of(tmp_path, error, noise=0.01):
    points = tuple((lr, p / lr) for p in PRODUCTS for lr in LRS)
    write_sweep(tmp_path, SyntheticSweep(error, points=points, noise=noise, steps_per_epoch=20_000))
    return run_checks(load_results(str(tmp_path)), sensitivity=False).optimum


def optimum_of(tmp_path, error, noise=0.01):
    table = optimum_table_of(tmp_path, error, noise)
    assert len(table) == 1
    return table.iloc[0]


def test_a_cell_at_chance_has_no_optimum_row(tmp_path):
    """Error at chance everywhere (a U of 0.01 on top, which a fit would find): no row."""
    table = optimum_table_of(tmp_path, lambda o, n, u, lr, l2:
                             0.89 + 0.01 * math.log(lr * l2 / 1e-3) ** 2 / 4, noise=0.002)
    assert table.empty


def test_fitted_minimum_of_parabolas_and_lines_by_hand():
    """A convex parabola's vertex inside the range; beyond it, the nearer end; a concave one
    (vertex at ln 3) or a rising line: the lower end of [ln 1, ln 8]; 2 products: NaN."""
    x = np.log(np.array([1.0, 2.0, 4.0, 8.0]))
    lo, hi = x.min(), x.max()
    y = (x - math.log(3.0)) ** 2 + 0.1
    beyond = (x - math.log(20.0)) ** 2
    got = fitted_minimum(x, np.stack([y, -y, beyond, x, -x]), lo, hi)
    assert got == pytest.approx([math.log(3.0), lo, hi, lo, hi])
    assert np.isnan(fitted_minimum(x[:2], y[None, :2], lo, hi)[0])


def test_rescaled_bootstrap_mean_has_the_unbiased_variance():
    """3 seeds 0.20, 0.23, 0.29: s^2 = 0.0021, so replicate means have variance s^2/3 = 7e-4
    (the plain bootstrap's is 2/3 of it)."""
    boot = bootstrap_means([np.array([0.20, 0.23, 0.29])], np.random.default_rng(0))
    assert boot.shape == (2000, 1)
    assert boot.var() == pytest.approx(0.0021 / 3, rel=0.08)
    assert bootstrap_means([np.array([0.3])], np.random.default_rng(0)).std() < 1e-12


def test_minima_overlap_is_not_asked_when_every_interval_reaches_the_same_end():
    assert minima_overlap([(1e-5, 1e-5, 1e-5), (1.2e-5, 1e-5, 2e-5)], 1e-5, 8e-5) is None
    assert minima_overlap([(7e-5, 6e-5, 8e-5), (8e-5, 7.5e-5, 8e-5)], 1e-5, 8e-5) is None
    assert minima_overlap([(2e-5, 1.2e-5, 3e-5), (1e-5, 1e-5, 1.5e-5)], 1e-5, 8e-5) is True
    assert minima_overlap([(2e-5, 1.8e-5, 3e-5), (6e-5, 5e-5, 8e-5)], 1e-5, 8e-5) is False
    assert minima_overlap([(2e-5, np.nan, np.nan), (3e-5, 2e-5, 4e-5)], 1e-5, 8e-5) is None


def test_u_shape_in_the_product_is_found_inside_its_interval(tmp_path):
    r = optimum_of(tmp_path, lambda o, n, u, lr, l2: 0.2 + 0.05 * math.log(lr * l2 / 1e-3) ** 2)
    assert r["p_star_low"] < 1e-3 < r["p_star_high"] and r["p_star_high"] / r["p_star_low"] < 1.2
    assert r["inside"] and r["best_interior"] and r["lr_minima_overlap"]
    assert 0 < r["mc_err_ln_low"] < 0.05 and 0 < r["mc_err_ln_high"] < 0.05


def test_lr_that_matters_on_its_own_moves_each_lr_minimum(tmp_path):
    """The optimum product doubles with lr: the lr curves' minima do not share an iso-line."""
    r = optimum_of(tmp_path, lambda o, n, u, lr, l2:
                   0.2 + 0.05 * math.log(lr * l2 / (1e-3 * lr / 0.05)) ** 2)
    per_lr = {lr: star for lr, star, _, _ in r["per_lr"]}
    assert per_lr[0.1] / per_lr[0.025] == pytest.approx(4, rel=0.1)
    assert not r["lr_minima_overlap"]


def test_error_rising_with_the_product_has_no_interior_optimum(tmp_path):
    """Error rising in log(product), concave: the optimum is the design's lower end, for the
    pooled fit and every lr, and the lr minima's overlap is not asked."""
    r = optimum_of(tmp_path, lambda o, n, u, lr, l2: 0.2 + 0.1 * math.log10(lr * l2 / 2e-4)
                   - 0.02 * math.log10(lr * l2 / 2e-4) ** 2)
    assert not r["best_interior"] and not r["inside"]
    assert r["p_best_point"] == pytest.approx(2e-4) and r["p_star"] == pytest.approx(2e-4)
    assert [star for _, star, _, _ in r["per_lr"]] == pytest.approx([2e-4] * 3)
    assert r["lr_minima_overlap"] is None

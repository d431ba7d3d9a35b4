"""The best effective learning rate (analysis/optimum.py) on synthetic iso-line sweeps with a
known optimum: found inside its interval, shifted per lr when lr matters on its own, and
outside the design when error only rises."""
import math

import numpy as np
import pytest

from analysis.collapse import run_checks
from analysis.load import load_results
from analysis.optimum import vertex
from analysis.synthetic import SyntheticSweep, write_sweep

LRS = (0.025, 0.05, 0.1)
PRODUCTS = (2e-4, 5e-4, 1e-3, 2e-3, 4e-3)


def optimum_of(tmp_path, error, noise=0.01):
    points = tuple((lr, p / lr) for p in PRODUCTS for lr in LRS)
    write_sweep(tmp_path, SyntheticSweep(error, points=points, noise=noise, steps_per_epoch=20_000))
    table = run_checks(load_results(str(tmp_path)), sensitivity=False).optimum
    assert len(table) == 1
    return table.iloc[0]


def test_vertex_of_a_parabola_by_hand():
    x = np.log(np.array([1.0, 2.0, 4.0, 8.0]))
    y = (x - math.log(3.0)) ** 2 + 0.1
    assert vertex(x, y[None])[0] == pytest.approx(math.log(3.0))
    assert np.isnan(vertex(x, -y[None])[0])  # concave: no minimum


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
    r = optimum_of(tmp_path, lambda o, n, u, lr, l2: 0.2 + 0.1 * math.log10(lr * l2 / 2e-4))
    assert not r["best_interior"] and not r["inside"]
    assert r["p_best_point"] == pytest.approx(2e-4)

"""The iso-line test (flat diagonals PASS; an lr-only and an l2-only effect FAIL; a
rectangular grid has no diagonals), the chance guard, the train-loss collapse and the
averaged outcome, on synthetic sweeps with known answers."""
import math

import numpy as np
import pandas as pd
import pytest
from designs import SGD_LRS, SGD_PRODUCTS, cell, checks_for, diagonals, rising, u_shape

from analysis.checks.isolines import ALPHA, diagonal_ids
from analysis.outcome import last_evals

ISO = diagonals(SGD_LRS, SGD_PRODUCTS)


def test_diagonal_ids_group_equal_products():
    lr = np.array([0.025, 0.05, 0.1, 0.05, 0.1])
    l2 = np.array([0.04, 0.02, 0.01, 0.04, 0.02])  # products 1e-3 x 3, 2e-3 x 2
    assert diagonal_ids(lr, l2, 1.0).tolist() == [0, 0, 0, 1, 1]
    # lr^2*l2: 2.5e-5, 5e-5, 1e-4, 1e-4, 2e-4
    assert diagonal_ids(lr, l2, 0.5).tolist() == [0, 1, 2, 2, 3]


def test_flat_diagonals_pass(tmp_path):
    r = cell(checks_for(tmp_path, rising, points=ISO).collapse)
    assert (r["n_diagonals"], r["n_iso_points"]) == (3, 12)
    assert r["iso_verdict"] == "PASS", r["iso_reason"]
    assert r["iso_p_equiv_adj"] < ALPHA and r["iso_across_p_adj"] < 1e-6
    assert abs(r["iso_slope"]) < 3 * r["iso_slope_se"]
    # the mean log2-lr span of a diagonal: log2(0.2 / 0.025) = 3
    assert r["iso_span"] == pytest.approx(3.0) and r["iso_along"] == pytest.approx(3 * r["iso_slope"])
    # across: outcome 0.75 x final error; 0.1 per decade of lr*l2 over log10(4) decades
    assert r["iso_across"] == pytest.approx(0.75 * 0.1 * math.log10(4), abs=0.01)
    assert r["verdict"] == "PASS", r["reason"]


@pytest.mark.parametrize("name, error", [
    ("lr only", lambda o, n, u, lr, l2: 0.6 + 0.05 * math.log2(lr)),
    ("l2 only", lambda o, n, u, lr, l2: 0.6 + 0.05 * math.log2(l2)),
])
def test_lr_or_l2_effect_along_diagonals_fails(tmp_path, name, error):
    r = cell(checks_for(tmp_path, error, points=ISO).collapse)
    assert r["iso_verdict"] == "FAIL", (name, r["iso_reason"])
    assert r["iso_p_out_adj"] < 1e-6
    # outcome = 0.75 * final error + const (the averaged synthetic history): slope 0.75 * 0.05
    # per doubling of lr (of l2, which halves along a diagonal as lr doubles)
    assert abs(r["iso_slope"]) == pytest.approx(0.75 * 0.05, rel=0.1)


def test_adam_diagonals_are_lr_squared_l2(tmp_path):
    lrs, products = (0.005, 0.01, 0.02, 0.04), (2e-6, 4e-6, 8e-6)
    r = cell(checks_for(tmp_path, lambda o, n, u, lr, l2: u_shape(math.log10(lr**2 * l2), -5.4),
                        optimizers=("adam",), points=diagonals(lrs, products, 2)).collapse,
             "adam/batch/l2")
    assert r["n_diagonals"] == 3 and r["iso_verdict"] == "PASS", r["iso_reason"]


def test_rectangular_grid_has_no_diagonals(tmp_path):
    r = cell(checks_for(tmp_path, lambda o, n, u, lr, l2: u_shape(math.log10(lr * l2), -3.5),
                        lrs=(0.025, 0.05, 0.1), l2s=(0.03, 0.1, 0.3)).collapse)
    assert r["n_diagonals"] == 0 and r["iso_verdict"] == "INSUFFICIENT"
    assert r["iso_reason"] == "0 diagonals with >= 2 distinct lr; need >= 2"


def test_every_point_at_chance_is_insufficient(tmp_path):
    def chance(o, n, u, lr, l2):
        return 0.9 + 0.003 * math.sin(7 * math.log(lr) + 3 * math.log(l2))
    checks = checks_for(tmp_path / "chance", chance, noise=0.002, points=ISO)
    r = cell(checks.collapse)
    assert r["verdict"] == "INSUFFICIENT" and "every point at chance" in r["reason"]
    assert r["iso_verdict"] == "INSUFFICIENT" and "every point at chance" in r["iso_reason"]
    assert cell(checks.equilibrium_cells)["verdict"] == "INSUFFICIENT"
    one_learns = cell(checks_for(tmp_path / "one", lambda o, n, u, lr, l2: 0.5 if lr == 0.2
                                 else chance(o, n, u, lr, l2), noise=0.002, points=ISO).collapse)
    assert "every point at chance" not in one_learns["reason"]


def test_train_loss_collapse_is_judged_beside_test_error(tmp_path):
    checks = checks_for(tmp_path, rising, points=ISO)
    test, train = cell(checks.collapse), cell(checks.collapse_train)
    # synthetic train loss = 2 x test error: the same slope, its interval and p-values
    assert train["s"] == pytest.approx(test["s"], abs=1e-6)
    assert train["verdict"] == "PASS", train["reason"]
    assert train["n_points"] == test["n_points"] == 12
    assert "iso_verdict" not in checks.collapse_train


def test_outcome_is_the_mean_of_the_last_evaluations():
    h = pd.DataFrame({"trial_id": ["a"] * 4 + ["b"] * 3,
                      "epoch": [1, 2, 3, 4, 1, 2, 3],
                      "test_error": [0.9, 0.5, 0.4, 0.3, 0.8, 0.6, np.nan],
                      "train_loss": [2.0, 1.0, 0.8, 0.6, 1.5, 1.1, np.nan],
                      "diverged": [False] * 6 + [True]})
    out = last_evals(h, 3).set_index("trial_id")
    assert out.loc["a", "test_outcome"] == pytest.approx(0.4)
    assert out.loc["a", "train_outcome"] == pytest.approx(0.8)
    assert out.loc["b", "test_outcome"] == pytest.approx(0.7)  # the diverged epoch left out
    assert out["n_evals"].tolist() == [3, 2]


def test_missing_point_warnings_skip_iso_designs():
    from analysis.collapse import missing_points

    iso = pd.DataFrame(ISO, columns=["lr", "l2"])
    rect = pd.DataFrame([(a, b) for a in (0.1, 0.2) for b in (0.01, 0.03)][:3], columns=["lr", "l2"])
    frame = pd.concat([iso.assign(cell="iso"), rect.assign(cell="rect")]).assign(optimizer="sgd")
    (warning,) = missing_points(frame)
    assert warning.startswith("rect: 1 of 4") and "(lr=0.2, l2=0.03)" in warning

"""Rules version 3 (analysis/rules.py) on synthetic sweeps with a known answer: the iso-line
test (flat diagonals PASS; an lr-only and an l2-only effect FAIL; a rectangular grid has no
diagonals), the chance guard, the train-loss collapse and the averaged outcome."""
import math

import numpy as np
import pandas as pd
import pytest

from analysis import rules as R
from analysis.collapse import CheckSettings, run_checks
from analysis.isolines import diagonal_ids
from analysis.load import load_results
from analysis.outcome import last_evals
from analysis.synthetic import SyntheticSweep, write_sweep

SGD_LRS = (0.025, 0.05, 0.1, 0.2)
SGD_PRODUCTS = (1e-3, 2e-3, 4e-3)


def diagonals(lrs, products, power=1):
    """(lr, l2) on the iso-lines lr^power * l2 = product."""
    return tuple((lr, float(f"{p / lr ** power:.12g}")) for p in products for lr in lrs)


def checks_for(tmp_path, error, rules="3", **sweep):
    sweep.setdefault("steps_per_epoch", 20_000)
    write_sweep(tmp_path, SyntheticSweep(error, **sweep))
    return run_checks(load_results(str(tmp_path)), CheckSettings(n_boot=100, rules=rules), False)


def cell(frame, name="sgd/batch/l2"):
    rows = frame[frame["cell"] == name]
    assert len(rows) == 1
    return rows.iloc[0]


def u_shape(z: float, center: float) -> float:
    return 0.1 + 0.05 * (z - center) ** 2


def rising(o, n, u, lr, l2):
    """Test error grows with lr*l2: 0.03 from one diagonal to the next of SGD_PRODUCTS."""
    return 0.2 + 0.1 * (math.log10(lr * l2) + 3)


def test_diagonal_ids_group_equal_products():
    lr = np.array([0.025, 0.05, 0.1, 0.05, 0.1])
    l2 = np.array([0.04, 0.02, 0.01, 0.04, 0.02])  # products 1e-3 x 3, 2e-3 x 2
    ids = diagonal_ids(lr, l2, 1.0)
    assert ids.tolist() == [0, 0, 0, 1, 1]
    # lr^2*l2: 2.5e-5, 5e-5, 1e-4, 1e-4, 2e-4
    assert diagonal_ids(lr, l2, 0.5).tolist() == [0, 1, 2, 2, 3]


def test_flat_diagonals_pass(tmp_path):
    r = cell(checks_for(tmp_path, rising, points=diagonals(SGD_LRS, SGD_PRODUCTS)).collapse)
    assert (r["n_diagonals"], r["n_iso_points"]) == (3, 12)
    assert r["iso_verdict"] == "PASS", r["iso_reason"]
    assert r["iso_along_p"] > R.ALPHA and r["iso_across_p"] < 1e-6
    assert abs(r["iso_slope"]) < 3 * r["iso_slope_se"]
    assert r["verdict"] == "PASS", r["reason"]


@pytest.mark.parametrize("name, error", [
    ("lr only", lambda o, n, u, lr, l2: 0.6 + 0.05 * math.log2(lr)),
    ("l2 only", lambda o, n, u, lr, l2: 0.6 + 0.05 * math.log2(l2)),
])
def test_lr_or_l2_effect_along_diagonals_fails(tmp_path, name, error):
    r = cell(checks_for(tmp_path, error, points=diagonals(SGD_LRS, SGD_PRODUCTS)).collapse)
    assert r["iso_verdict"] == "FAIL", (name, r["iso_reason"])
    assert r["iso_along_p"] < 1e-6
    # outcome = 0.75 * final error + const (the averaged synthetic history): slope 0.75 * 0.05
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


def test_every_point_at_chance_is_insufficient(tmp_path):
    def chance(o, n, u, lr, l2):
        return 0.9 + 0.003 * math.sin(7 * math.log(lr) + 3 * math.log(l2))
    v3 = cell(checks_for(tmp_path / "v3", chance, noise=0.002,
                         points=diagonals(SGD_LRS, SGD_PRODUCTS)).collapse)
    assert v3["verdict"] == "INSUFFICIENT" and "every point at chance" in v3["reason"]
    assert v3["iso_verdict"] == "INSUFFICIENT"
    v2 = cell(checks_for(tmp_path / "v2", chance, rules="2", noise=0.002,
                         points=diagonals(SGD_LRS, SGD_PRODUCTS)).collapse)
    assert v2["verdict"] == "FAIL"  # what rules 2 said of v2's adam/none control
    one_learns = cell(checks_for(tmp_path / "one", lambda o, n, u, lr, l2: 0.5 if lr == 0.2
                                 else chance(o, n, u, lr, l2), noise=0.002,
                                 points=diagonals(SGD_LRS, SGD_PRODUCTS)).collapse)
    assert "every point at chance" not in one_learns["reason"]


def test_train_loss_collapse_is_judged_beside_test_error(tmp_path):
    checks = checks_for(tmp_path, rising, points=diagonals(SGD_LRS, SGD_PRODUCTS))
    test, train = cell(checks.collapse), cell(checks.collapse_train)
    # synthetic train loss = 2 x test error, so the fitted slope is the same
    assert train["s"] == pytest.approx(test["s"], abs=0.02)
    assert train["verdict"] == "PASS", train["reason"]
    assert train["n_points"] == test["n_points"] == 12
    v2 = run_checks(load_results(str(tmp_path)), CheckSettings(n_boot=100, rules="2"), False)
    assert v2.collapse_train is None and "iso_verdict" not in v2.collapse


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


def test_thresholds_per_version():
    assert "outcome_evals" not in R.thresholds("2")
    assert R.thresholds("3")["outcome_evals"] == 3 and R.thresholds("3")["rules_version"] == "3"
    with pytest.raises(ValueError, match="unknown rules version '9'"):
        R.version("9")


def test_rule_changes_shows_each_step_from_2_to_3(tmp_path):
    from analysis.rule_changes import markdown, variants, verdicts

    assert [label for label, _ in variants("2", "3")] == [
        "2", "+ outcome_evals=3", "+ chance_guard=True", "+ train_loss=True", "+ iso_test=True"]
    assert set(R.VERSIONS) == {"2", "3", "4"}
    write_sweep(tmp_path, SyntheticSweep(
        lambda o, n, u, lr, l2: 0.9 + 0.003 * math.sin(7 * math.log(lr) + 3 * math.log(l2)),
        noise=0.002, steps_per_epoch=20_000, points=diagonals(SGD_LRS, SGD_PRODUCTS)))
    table = verdicts(str(tmp_path), n_boot=50, new="3").set_index(["check", "cell"])
    assert set(R.VERSIONS) == {"2", "3", "4"}  # the variants were registered for the run only
    collapse = table.loc[("collapse", "sgd/batch/l2")]
    assert list(collapse) == ["FAIL", "FAIL", "INSUFFICIENT", "INSUFFICIENT", "INSUFFICIENT"]
    assert pd.isna(table.loc[("iso_lines", "sgd/batch/l2"), "+ train_loss=True"])
    assert "| collapse | sgd/batch/l2 | FAIL | FAIL | INSUFFICIENT |" in markdown(table.reset_index())


def test_missing_point_warnings_skip_iso_designs():
    from analysis.collapse import missing_points

    iso = pd.DataFrame(diagonals(SGD_LRS, SGD_PRODUCTS), columns=["lr", "l2"])
    rect = pd.DataFrame([(a, b) for a in (0.1, 0.2) for b in (0.01, 0.03)][:3], columns=["lr", "l2"])
    frame = pd.concat([iso.assign(cell="iso"), rect.assign(cell="rect")]).assign(optimizer="sgd")
    (warning,) = missing_points(frame)
    assert warning.startswith("rect: 1 of 4") and "(lr=0.2, l2=0.03)" in warning

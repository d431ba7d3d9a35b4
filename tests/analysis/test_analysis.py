"""The analysis checks (protocol 5) on synthetic Parquet results whose test error is a known
function, and the pieces they rest on (the spline, the loaders)."""
import math

import numpy as np
import pytest
from designs import L2S, LRS, checks_for, only, u_shape

from analysis.checks import slope
from analysis.collapse import CheckSettings
from analysis.load import load_results
from analysis.synthetic import SyntheticSweep, write_sweep


def test_error_of_lr_times_l2_gives_s_1_and_passes(tmp_path):
    checks = checks_for(tmp_path, lambda o, n, u, lr, l2: u_shape(math.log10(lr * l2), -3.5))
    row = only(checks.collapse, cell="sgd/batch/l2")
    assert abs(row["s"] - 1.0) < 0.1 and row["ci_low"] - 0.05 <= 1.0 <= row["ci_high"] + 0.05
    assert row["r2adj_1d"] > 0.9 > max(row["r2adj_lr"], row["r2adj_l2"])
    assert row["lof_p"] > 0.05  # a true collapse: no lack of fit against 3 seeds
    assert row["verdict"] == "PASS" and row["verdict_by_edge"] == ["PASS"] * 3
    # dof from the design (all 25 points: min(6, 25 // 3, 9 distinct x)), not the 20 used
    assert (row["n_points"], len(row["excluded"]), row["dof"]) == (20, 5, 6)


def test_error_of_lr_squared_times_l2_gives_s_half(tmp_path):
    checks = checks_for(tmp_path, lambda o, n, u, lr, l2: u_shape(math.log10(lr**2 * l2), -4.5),
                        optimizers=("adam", "sgd"))
    adam, sgd = only(checks.collapse, optimizer="adam"), only(checks.collapse, optimizer="sgd")
    assert abs(adam["s"] - 0.5) < 0.05 and abs(sgd["s"] - 0.5) < 0.05
    assert (adam["s_theory"], sgd["s_theory"]) == (0.5, 1.0)
    assert adam["verdict"] == "PASS"
    assert sgd["verdict"] == "FAIL" and "significantly outside" in sgd["reason"]


def test_error_of_lr_alone_fails_collapse_and_passes_projection(tmp_path):
    checks = checks_for(tmp_path, lambda o, n, u, lr, l2: u_shape(math.log10(lr), -1),
                        updates=("l2", "projection"), l2s=(0.0,) + L2S)
    collapse = only(checks.collapse, cell="sgd/batch/l2")
    assert abs(collapse["s"]) < 0.1 and collapse["verdict"] == "FAIL"
    projection = only(checks.projection, cell="sgd/batch/projection")
    # l2 = 0 is left out: the effect is a slope in log2(l2)
    assert (projection["n_l2"], projection["n_points"]) == (5, 25)
    assert abs(projection["l2_effect"]) < 0.01 and projection["lr_p"] < 1e-6
    assert projection["verdict"] == "PASS"


def test_error_of_lr_times_l2_fails_projection_flatness(tmp_path):
    checks = checks_for(tmp_path, lambda o, n, u, lr, l2: 0.5 + 0.05 * math.log10(lr * l2),
                        updates=("projection",))
    row = only(checks.projection, cell="sgd/batch/projection")
    # outcome = 0.75 x final error + 0.225 (mean of the 3 synthetic epochs): 0.75 * 0.05 per
    # decade of l2 over 2 decades
    assert row["l2_effect"] == pytest.approx(0.75 * 0.05 * 2, abs=0.01)
    assert row["verdict"] == "FAIL" and "significantly outside" in row["reason"]


def test_pure_noise_is_not_a_pass(tmp_path):
    checks = checks_for(tmp_path, lambda *_: 0.3, noise=0.05, updates=("l2", "projection"))
    collapse = only(checks.collapse, cell="sgd/batch/l2")
    assert collapse["verdict"] != "PASS" and collapse["iso_verdict"] != "PASS"
    projection = only(checks.projection, cell="sgd/batch/projection")
    # nothing varies, but the noise is too large to show the l2 effect inside +-0.02
    assert projection["verdict"] == "INSUFFICIENT", projection["reason"]


def test_too_few_points_is_insufficient(tmp_path):
    """Every point settles, but 2 lr values are fewer than the 3 a fit needs."""
    checks = checks_for(tmp_path, lambda o, n, u, lr, l2: u_shape(math.log10(lr * l2), -3.5),
                        lrs=(0.1, 0.2), l2s=(0.01, 0.02, 0.04))
    row = only(checks.collapse, cell="sgd/batch/l2")
    assert row["verdict"] == row["iso_verdict"] == "INSUFFICIENT"
    assert row["reason"] == ("the design has 6 non-diverged points over 2 lr x 3 l2 values "
                             "(need >= 6 and >= 3 of each)")
    assert (row["n_points"], row["n_lr"], row["n_l2"]) == (6, 2, 3)


def test_measured_equilibrium_rule_by_hand(tmp_path):
    """A point is used when its last epoch's drifts are small: by hand from the synthetic
    dynamics ||w||(t) = eq + (1 - eq) exp(-t/tau), tau = (1 - mu)/(lr*2*l2), angle ~ ||w||^-2."""
    checks = checks_for(tmp_path, lambda o, n, u, lr, l2: 0.2, steps_per_epoch=1000, epochs=3,
                        optimizers=("sgd", "momentum"))
    for opt, mu in (("sgd", 0.0), ("momentum", 0.9)):
        row = only(checks.collapse, optimizer=opt)
        slow = []
        for lr in LRS:
            for l2 in L2S:
                tau = (1 - mu) / (lr * 2 * l2)
                eq = (lr / (4 * l2)) ** 0.25
                w2, w3 = (eq + (1 - eq) * math.exp(-t / tau) for t in (2000, 3000))
                norm_drift = abs(math.log(w3 / w2)) / 1000 * tau
                if not (norm_drift <= 0.1 and 2 * abs(math.log(w3 / w2)) <= 0.1):
                    slow.append([lr, l2])
        assert sorted(row["excluded"]) == sorted(slow)
        assert 0 < len(slow) < 25 and row["n_points"] == 25 - len(slow)


def test_diverged_points_are_kept_out_of_the_fit_but_listed(tmp_path):
    checks = checks_for(tmp_path, lambda o, n, u, lr, l2: u_shape(math.log10(lr * l2), -3.5),
                        lrs=LRS + (3.0,), diverge_lr=3.0)
    row = only(checks.collapse, cell="sgd/batch/l2")
    assert sorted(row["diverged"]) == sorted([3.0, l2] for l2 in L2S)
    assert row["n_diverged_points"] == 5 and row["n_points"] + len(row["excluded"]) == 25
    assert row["verdict"] == "PASS"  # the divergent lr column does not drag s to 0
    diverged = checks.points[checks.points["lr"] == 3.0]
    assert len(diverged) == 5 and diverged["all_diverged"].all()
    assert np.allclose(diverged["error_mean"], 0.9) and diverged["fit_mean"].isna().all()


def test_equilibrium_angular_ratio_by_hand(tmp_path):
    checks = checks_for(tmp_path, lambda *_: 0.2)
    t = load_results(str(tmp_path)).trials
    expected = {}
    for (lr, l2), g in t.groupby(["lr", "l2"]):
        per_trial = np.mean([g[f"{c}_angular_update"] / g[f"{c}_pred_angular_update"]
                             for c in ("conv1", "conv2", "conv3")], axis=0)
        expected[(lr, l2)] = per_trial.mean()
    eq = checks.equilibrium
    assert len(eq) == int(checks.points["equilibrated"].sum()) > 0
    for r in eq.itertuples():
        assert r.ang_ratio == pytest.approx(expected[(r.lr, r.l2)], rel=1e-12)
    # synthetic SGD dynamics sit at the predicted equilibrium once relaxed
    row = only(checks.equilibrium_cells, cell="sgd/batch/l2")
    assert row["balance_median"] == pytest.approx(1.0, abs=1e-6) and row["verdict"] == "PASS"


def test_large_l2_regime_is_left_out_of_flatness(tmp_path):
    def error(o, n, u, lr, l2):  # flat in l2, except at the largest l2
        return u_shape(math.log10(lr), -1) + (0.3 if l2 >= 1e-2 else 0.0)
    auto = checks_for(tmp_path / "auto", error, updates=("projection",))
    explicit = checks_for(tmp_path / "explicit", error, updates=("projection",),
                          settings=CheckSettings(large_l2=5e-3))
    row = only(auto.projection, cell="sgd/batch/projection")
    assert row["large_l2"] == 0.5 and row["verdict"] == "FAIL"  # unit gradient norm / 2
    row = only(explicit.projection, cell="sgd/batch/projection")
    assert (row["n_large_l2"], row["n_l2"], row["verdict"]) == (5, 4, "PASS")


# ---- the fit itself ----

def test_spline_recovers_a_cubic_exactly():
    x = np.linspace(-2, 3, 30)
    y = 0.3 - 0.2 * x + 0.05 * x**3
    w = np.ones_like(x)
    sse, fitted = slope.weighted_sse(x, y, w, 4)
    assert sse == pytest.approx(0.0, abs=1e-20) and fitted == pytest.approx(y, abs=1e-12)
    # a quadratic (dof 3) leaves the SSE of the least-squares quadratic, by hand
    X = np.stack([np.ones_like(x), x, x**2], axis=1)
    resid = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
    assert slope.weighted_sse(x, y, w, 3)[0] == pytest.approx((resid**2).sum(), rel=1e-9)
    # weights: a point of weight 2 counts as that point twice
    w2 = np.where(np.arange(30) == 5, 2.0, 1.0)
    Xd, yd = np.vstack([X, X[5:6]]), np.append(y, y[5])
    resid = yd - Xd @ np.linalg.lstsq(Xd, yd, rcond=None)[0]
    assert slope.weighted_sse(x, y, w2, 3)[0] == pytest.approx((resid**2).sum(), rel=1e-9)


def test_adjusted_r2_by_hand():
    assert slope.adjusted_r2(0.8, 21, 5) == pytest.approx(1 - 0.2 * 20 / 16)
    assert math.isnan(slope.adjusted_r2(0.8, 5, 5))


def test_design_dof_by_hand():
    lr, l2 = (a.ravel() for a in np.meshgrid(LRS, L2S))
    assert slope.design_dof(np.log(lr), np.log(l2)) == 6  # min(6, 25 // 3 = 8, 9 distinct x)
    assert slope.design_dof(np.log(lr[:9]), np.log(l2[:9])) == 3  # 9 // 3
    # an iso design of 3 diagonals: x takes 3 values at s = 1, whatever the points per line
    from designs import SGD_LRS, SGD_PRODUCTS, diagonals
    pts = np.array(diagonals(SGD_LRS, SGD_PRODUCTS))
    assert slope.design_dof(np.log(pts[:, 0]), np.log(pts[:, 1])) == 3


# ---- loading ----

def test_compacted_files_read_like_one_file_per_trial(tmp_path):
    """results/ ships each dataset as one compacted file: same trials, nothing skipped."""
    from analysis.compact import main as compact_main

    per_trial = tmp_path / "per_trial"
    write_sweep(per_trial, SyntheticSweep(lambda o, n, u, lr, l2: 0.5, seeds=(0,),
                                          extra={"data_dir": str(tmp_path / "cifar10")}))
    compact = tmp_path / "compact"
    assert compact_main(["--results", str(per_trial), "--out", str(compact)]) == 0
    assert [p.name for p in (compact / "history").iterdir()] == ["per_trial.parquet"]
    with pytest.raises(SystemExit, match="exists; not overwriting"):
        compact_main(["--results", str(per_trial), "--out", str(compact)])
    a, b = load_results(str(per_trial)), load_results(str(compact))
    assert b.skipped == [] and a.skipped == []
    assert list(b.trials["trial_id"]) == list(a.trials["trial_id"]) and len(a.trials) == 25
    assert len(b.history) == len(a.history) == 25 * 3
    # the machine's path is in the sweep's own files, not in the compacted ones meant to ship
    assert set(a.trials["data_dir"]) == {str(tmp_path / "cifar10")}
    assert b.trials["data_dir"].isna().all() and b.history["data_dir"].isna().all()
    assert (b.trials.drop(columns="data_dir").reset_index(drop=True)
            .equals(a.trials.drop(columns="data_dir").reset_index(drop=True)))


def test_corrupt_sweep_json_is_a_named_warning_not_a_silent_empty_grid(tmp_path):
    """sweep.json lists a trial with no file (not started); corrupting sweep.json must not
    make the analysis forget that silently."""
    import json

    ids = write_sweep(tmp_path, SyntheticSweep(lambda *a: 0.3, lrs=LRS[:3], l2s=L2S[:3]))
    (tmp_path / "sweep.json").write_text(json.dumps({"trial_ids": ids + ["feedfacecafe"]}))
    listed = load_results(str(tmp_path))
    assert ("feedfacecafe", "not_started") in {(t, k) for t, k, _ in listed.skipped}
    assert not any("sweep.json" in w for w in listed.warnings)
    for broken in ('{"trial_ids": [', '{"trial_ids": 3}', "[1, 2]"):
        (tmp_path / "sweep.json").write_text(broken)
        results = load_results(str(tmp_path))
        [warning] = [w for w in results.warnings if "sweep.json" in w]
        assert "unreadable" in warning and "not started" in warning
        assert len(results.trials) == len(ids)

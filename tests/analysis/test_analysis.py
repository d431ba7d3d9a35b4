"""The analysis checks on synthetic Parquet results whose test error is a known function."""
import math

import numpy as np
import pytest

from analysis import fit
from analysis.collapse import CheckSettings, collapse_stats, run_checks
from analysis.export import to_json
from analysis.load import load_results
from analysis.stats import FTest
from analysis.synthetic import SyntheticSweep, write_sweep

LRS = tuple(np.logspace(-2, 0, 5))
L2S = tuple(np.logspace(-4, -2, 5))


def u_shape(z: float, center: float, width: float = 1.0) -> float:
    """A test-error curve with an optimum: 0.1 at z = center, rising on both sides."""
    return 0.1 + 0.05 * ((z - center) / width) ** 2


def checks_for(tmp_path, error, settings=None, **sweep):
    sweep.setdefault("steps_per_epoch", 20_000)  # most points equilibrate (measured rule)
    write_sweep(tmp_path, SyntheticSweep(error, **sweep))
    results = load_results(str(tmp_path))
    return results, run_checks(results, settings or CheckSettings(n_boot=100))


def only(frame, **match):
    rows = frame
    for k, v in match.items():
        rows = rows[rows[k] == v]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_error_of_lr_times_l2_gives_s_1_and_passes(tmp_path):
    _, checks = checks_for(tmp_path, lambda o, n, u, lr, l2: u_shape(math.log10(lr * l2), -3.5))
    row = only(checks.collapse, cell="sgd/batch/l2")
    assert abs(row["s"] - 1.0) < 0.1
    assert row["ci_low"] - 0.05 <= 1.0 <= row["ci_high"] + 0.05
    assert row["r2adj_1d"] > 0.9 > max(row["r2adj_lr"], row["r2adj_l2"])
    assert row["lof_p"] > 0.05  # a true collapse: no lack of fit against 3 seeds
    assert row["verdict"] == "PASS"


def test_error_of_lr_squared_times_l2_gives_s_half(tmp_path):
    _, checks = checks_for(tmp_path, lambda o, n, u, lr, l2: u_shape(math.log10(lr**2 * l2), -4.5),
                           optimizers=("adam", "sgd"), settings=CheckSettings(100, equilibrium="all"))
    adam, sgd = only(checks.collapse, optimizer="adam"), only(checks.collapse, optimizer="sgd")
    assert abs(adam["s"] - 0.5) < 0.05 and abs(sgd["s"] - 0.5) < 0.05
    assert (adam["s_theory"], sgd["s_theory"]) == (0.5, 1.0)
    assert adam["verdict"] == "PASS"
    assert sgd["verdict"] == "FAIL" and "outside" in sgd["reason"]


def test_error_of_lr_alone_fails_collapse_and_passes_projection(tmp_path):
    _, checks = checks_for(tmp_path, lambda o, n, u, lr, l2: u_shape(math.log10(lr), -1),
                           updates=("l2", "projection"), l2s=(0.0,) + L2S)
    collapse = only(checks.collapse, cell="sgd/batch/l2")
    assert abs(collapse["s"]) < 0.1
    assert collapse["verdict"] == "FAIL"
    projection = only(checks.projection, cell="sgd/batch/projection")
    assert projection["n_l2"] == 6  # l2 = 0 counts: it is below the large-l2 regime
    assert projection["ratio"] < 0.3
    assert projection["verdict"] == "PASS"


def test_error_of_lr_times_l2_fails_projection_flatness(tmp_path):
    _, checks = checks_for(tmp_path, lambda o, n, u, lr, l2: u_shape(math.log10(lr * l2), -3.5),
                           updates=("projection",))
    row = only(checks.projection, cell="sgd/batch/projection")
    assert row["ratio"] > 0.5 and row["verdict"] == "FAIL"


def test_pure_noise_fails_everything(tmp_path):
    _, checks = checks_for(tmp_path, lambda *_: 0.3, noise=0.05, updates=("l2", "projection"))
    assert only(checks.collapse, cell="sgd/batch/l2")["verdict"] == "FAIL"
    projection = only(checks.projection, cell="sgd/batch/projection")
    # nothing varies: flatness in l2 cannot be told from a design that detects nothing
    assert projection["verdict"] == "INSUFFICIENT" and "no significant lr effect" in projection["reason"]


def test_too_few_points_is_insufficient(tmp_path):
    _, checks = checks_for(tmp_path, lambda o, n, u, lr, l2: u_shape(math.log10(lr * l2), -3.5),
                           lrs=LRS[:2], l2s=L2S[:3], updates=("l2", "projection"))
    row = only(checks.collapse, cell="sgd/batch/l2")
    assert row["verdict"] == "INSUFFICIENT" and "need >= 6 points" in row["reason"]


def test_measured_equilibrium_rule_by_hand(tmp_path):
    """A point is used when its last epoch's drifts are small: by hand from the synthetic
    dynamics ||w||(t) = eq + (1 - eq) exp(-t/tau), tau = (1 - mu)/(lr*2*l2), angle ~ ||w||^-2."""
    results, checks = checks_for(tmp_path, lambda o, n, u, lr, l2: 0.2, steps_per_epoch=1000,
                                 epochs=3, optimizers=("sgd", "momentum"))
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


def test_relaxation_rule_is_an_exploration_variant(tmp_path):
    _, checks = checks_for(tmp_path, lambda o, n, u, lr, l2: 0.2, steps_per_epoch=100, epochs=3,
                           settings=CheckSettings(100, equilibrium="relaxation"))
    slow = sorted([lr, l2] for lr in LRS for l2 in L2S if 1 / (lr * 2 * l2) > 300)
    assert sorted(only(checks.collapse, optimizer="sgd")["excluded"]) == slow


def test_diverged_points_are_kept_out_of_the_fit_but_listed(tmp_path):
    results, checks = checks_for(tmp_path, lambda o, n, u, lr, l2: u_shape(math.log10(lr * l2), -3.5),
                                 lrs=LRS + (3.0,), diverge_lr=3.0)
    row = only(checks.collapse, cell="sgd/batch/l2")
    assert sorted(row["diverged"]) == sorted([3.0, l2] for l2 in L2S)
    assert row["verdict"] == "PASS"  # the divergent lr column does not drag s to 0
    diverged = checks.points[checks.points["lr"] == 3.0]
    assert len(diverged) == 5 and diverged["all_diverged"].all()
    assert np.allclose(diverged["error_mean"], 0.9)


def test_equilibrium_angular_ratio_by_hand(tmp_path):
    results, checks = checks_for(tmp_path, lambda *_: 0.2, steps_per_epoch=20_000)
    t = results.trials
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
    assert only(checks.equilibrium_cells, cell="sgd/batch/l2")["verdict"] == "PASS"


def test_large_l2_regime_is_left_out_of_flatness(tmp_path):
    def error(o, n, u, lr, l2):  # flat in l2, except at the largest l2
        return u_shape(math.log10(lr), -1) + (0.3 if l2 >= 1e-2 else 0.0)
    _, auto = checks_for(tmp_path, error, updates=("projection",))
    _, explicit = checks_for(tmp_path, error, updates=("projection",),
                             settings=CheckSettings(100, large_l2=5e-3))
    assert only(auto.projection, cell="sgd/batch/projection")["verdict"] == "FAIL"
    row = only(explicit.projection, cell="sgd/batch/projection")
    assert (row["n_large_l2"], row["n_l2"], row["verdict"]) == (5, 4, "PASS")


def test_same_inputs_give_identical_json_and_seed_matters(tmp_path):
    error = lambda o, n, u, lr, l2: u_shape(math.log10(lr * l2), -3.5)  # noqa: E731
    write_sweep(tmp_path, SyntheticSweep(error))
    results = load_results(str(tmp_path))
    a = to_json(run_checks(results, CheckSettings(50, seed=1)), results)
    b = to_json(run_checks(load_results(str(tmp_path)), CheckSettings(50, seed=1)), results)
    c = to_json(run_checks(results, CheckSettings(50, seed=2)), results)
    assert a == b and a != c


# ---- the fit itself ----

def test_spline_recovers_a_cubic_exactly():
    x = np.linspace(-2, 3, 30)
    y = 0.3 - 0.2 * x + 0.05 * x**3
    assert fit.r2_rows(x, y[None], dof=4)[0] == pytest.approx(1.0, abs=1e-9)
    # a quadratic explains a known share of a cubic: R^2 = 1 - SSE/SST by hand
    X = np.stack([np.ones_like(x), x, x**2], axis=1)
    resid = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
    by_hand = 1 - (resid**2).sum() / ((y - y.mean()) ** 2).sum()
    assert fit.r2_rows(x, y[None], dof=3)[0] == pytest.approx(by_hand, rel=1e-9)


NO_LOF = FTest(1.0, 18, 50, 0.45, "lack of fit vs seeds")


@pytest.mark.parametrize("s, low, high, r2_1d, verdict, why", [
    (1.02, 0.95, 1.10, 0.95, "PASS", "all criteria met"),
    (1.20, 1.10, 1.30, 0.95, "FAIL", "theory s=1 outside [1.100, 1.300] +- 0.05"),
    (1.08, 1.04, 1.10, 0.95, "PASS", "all criteria met"),  # 1 lies within the 0.05 slack
    (1.08, 1.06, 1.10, 0.95, "FAIL", "outside"),  # ... and here it does not
    (1.00, 0.20, 1.80, 0.95, "INSUFFICIENT", "holds both s = 1/2 and s = 1"),
    (1.00, 0.54, 1.30, 0.95, "INSUFFICIENT", "holds both"),  # 1/2 within the 0.05 slack
    (1.06, 0.84, 1.34, 0.95, "PASS", "all criteria met"),  # wide, but excludes s = 1/2
    (1.00, 0.95, 1.05, 0.30, "FAIL", "adjusted R^2_1D"),
])
def test_collapse_verdict_rules(s, low, high, r2_1d, verdict, why):
    f = fit.SlopeFit(s, low, high, r2_1d, 0.2, 0.1, 6, "seeds")
    out = collapse_stats(f, n=25, n_lr=5, n_l2=5, s_theory=1.0, lof=NO_LOF)
    assert out["verdict"] == verdict and why in out["reason"]
    assert out["r2adj_1d"] == pytest.approx(1 - (1 - r2_1d) * 24 / (25 - 7))
    assert out["gain"] == pytest.approx((r2_1d - 0.2) / 0.8)


def test_lack_of_fit_and_one_seed_rules():
    f = fit.SlopeFit(1.02, 0.95, 1.10, 0.95, 0.2, 0.1, 6, "seeds")
    lof = FTest(3.0, 18, 50, 0.001, "lack of fit vs seeds")
    out = collapse_stats(f, n=25, n_lr=5, n_l2=5, s_theory=1.0, lof=lof)
    assert out["verdict"] == "FAIL" and "lack of fit" in out["reason"]
    one_seed = fit.SlopeFit(1.02, 0.95, 1.10, 0.95, 0.2, 0.1, 6, "residuals")
    out = collapse_stats(one_seed, n=25, n_lr=5, n_l2=5, s_theory=1.0, lof=None)
    assert (out["verdict"], out["descriptive"]) == ("DESCRIPTIVE", "PASS")
    assert "one seed" in out["reason"]


def test_adjusted_r2_by_hand():
    assert fit.adjusted_r2(0.8, 21, 5) == pytest.approx(1 - 0.2 * 20 / 16)
    assert math.isnan(fit.adjusted_r2(0.8, 5, 5))


def test_seed_bootstrap_interval_covers_the_truth():
    """Over 30 noisy replicates of a collapsing grid (3 seeds), the 95% interval holds s = 1
    in at least 90% of them. Seeded, so the counts are fixed: 28/30 with the pooled k/(k-1)
    deviations; 25/30 resampling each point's own seeds, 24/30 without the k/(k-1) factor.
    test_bootstrap_calibration.py checks the replicates' variance exactly."""
    rng = np.random.default_rng(0)
    lr, l2 = (a.ravel() for a in np.meshgrid(np.logspace(-2, 0, 4), np.logspace(-4, -2, 4)))
    truth = 0.1 + 0.05 * (np.log10(lr * l2) + 4) ** 2
    hits = 0
    for rep in range(30):
        errors = [t + 0.005 * rng.standard_normal(3) for t in truth]
        f = fit.fit_slope(lr, l2, errors, 100, np.random.default_rng(rep))
        hits += f.ci_low <= 1.0 <= f.ci_high
    assert hits >= 27, f"{hits}/30 intervals hold s = 1"


def test_compacted_files_read_like_one_file_per_trial(tmp_path):
    """results/ ships each dataset as one compacted file: same trials, nothing skipped."""
    from analysis.compact import main as compact_main

    per_trial = tmp_path / "per_trial"
    write_sweep(per_trial, SyntheticSweep(lambda o, n, u, lr, l2: 0.5, seeds=(0,)))
    compact = tmp_path / "compact"
    assert compact_main(["--results", str(per_trial), "--out", str(compact)]) == 0
    assert [p.name for p in (compact / "history").iterdir()] == ["per_trial.parquet"]
    with pytest.raises(SystemExit, match="exists; not overwriting"):
        compact_main(["--results", str(per_trial), "--out", str(compact)])
    a, b = load_results(str(per_trial)), load_results(str(compact))
    assert b.skipped == [] and a.skipped == []
    assert list(b.trials["trial_id"]) == list(a.trials["trial_id"]) and len(a.trials) == 25
    assert len(b.history) == len(a.history) == 25 * 3


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

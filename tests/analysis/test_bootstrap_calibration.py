"""The collapse fit's bootstrap intervals are calibrated, and their replicates are built as
documented (analysis/fit.py, bootstrap_errors): a wrong resampling scheme fails here.

- single seed ("residuals"): fitted 1-D model + its residuals resampled and scaled by
  sqrt(n/(n - dof - 1)); resampling the raw errors instead destroys the (lr, l2) structure
  and gives an interval as wide as the s grid, which still "covers" the truth;
- several seeds ("seeds"): each point's k seeds redrawn from the pooled within-point
  deviations scaled by sqrt(k/(k-1)), so a point's replicate mean has variance s_pooled^2/k;
  each point's own seeds, or no k/(k-1), give 2/3 of that for k = 3.
"""
import numpy as np
import pytest

from analysis import fit

COARSE_S_GRID = np.round(np.linspace(-1.0, 3.0, 81), 10)  # step 0.05: 5x faster fits
LR, L2 = (a.ravel() for a in np.meshgrid(np.logspace(-2, 0, 4), np.logspace(-4, -2, 4)))
TRUTH = 0.1 + 0.05 * (np.log10(LR * L2) + 4) ** 2  # a function of lr*l2: s = 1


def raw_error_bootstrap(errors, fitted, dof, n_boot, rng):
    """A wrong scheme: the per-point errors themselves resampled across points."""
    means = np.array([e.mean() for e in errors])
    return means[rng.integers(0, len(means), (n_boot, len(means)))], "residuals"


def single_seed_intervals(reps: int, noise: float = 0.01) -> tuple[int, float, float]:
    """(intervals holding s = 1, median interval width, sd of the fitted s) over `reps`
    seeded single-seed replicates of the 4 x 4 grid."""
    rng = np.random.default_rng(0)
    hits, widths, s_hat = 0, [], []
    for rep in range(reps):
        errors = [np.array([t + noise * rng.standard_normal()]) for t in TRUTH]
        f = fit.fit_slope(LR, L2, errors, 100, np.random.default_rng(rep))
        assert f.bootstrap == "residuals"
        hits += f.ci_low <= 1.0 <= f.ci_high
        widths.append(f.ci_high - f.ci_low)
        s_hat.append(f.s)
    return hits, float(np.median(widths)), float(np.std(s_hat, ddof=1))


def test_single_seed_interval_covers_the_true_s_and_is_as_wide_as_its_spread(monkeypatch):
    """>= 85% of 40 intervals hold s = 1, and a 95% interval spans about 2 x 1.96 sd of the
    fitted s across replicates (measured: 0.9 of it), not the whole s grid."""
    monkeypatch.setattr(fit, "S_GRID", COARSE_S_GRID)
    hits, width, sd = single_seed_intervals(40)
    assert hits >= 34, f"{hits}/40 intervals hold s = 1"
    assert 0.6 < width / (2 * 1.96 * sd) < 1.6, (width, sd)
    assert width < 0.6


def test_resampling_the_raw_errors_fails_that_check(monkeypatch):
    """The check above is not vacuous: the raw-error scheme covers s = 1 every time, but
    with an interval over the whole s grid."""
    monkeypatch.setattr(fit, "S_GRID", COARSE_S_GRID)
    monkeypatch.setattr(fit, "bootstrap_errors", raw_error_bootstrap)
    hits, width, sd = single_seed_intervals(10)
    assert hits == 10 and width / (2 * 1.96 * sd) > 3 and width > 2


def test_residual_replicates_are_the_fit_plus_rescaled_residuals():
    rng = np.random.default_rng(1)
    n, dof = 16, 4
    fitted = np.linspace(0.2, 0.5, n)
    errors = [np.array([f + 0.02 * rng.standard_normal()]) for f in fitted]
    Y, mode = fit.bootstrap_errors(errors, fitted, dof, 20_000, np.random.default_rng(2))
    assert mode == "residuals" and Y.shape == (20_000, n)
    resid = (np.array([e[0] for e in errors]) - fitted) * np.sqrt(n / (n - dof - 1))
    drawn = Y - fitted  # every replicate value is the fit plus one of the scaled residuals
    assert np.isclose(drawn[..., None], resid).any(-1).all(), \
        "replicate values are not the fit plus one of the rescaled residuals"
    assert drawn.mean(0) == pytest.approx(np.full(n, resid.mean()), abs=0.004)
    assert drawn.var(0) == pytest.approx(np.full(n, resid.var()), rel=0.06)
    assert not np.allclose(Y.mean(0), [e[0] for e in errors], atol=0.005)  # not the raw errors


@pytest.mark.parametrize("seeds", [3, (2, 3)])
def test_seed_replicates_have_the_pooled_unbiased_variance(seeds):
    """Each point's replicate mean varies as s_pooled^2/k around its own mean, with s_pooled^2
    the unbiased pooled within-point variance (computed here by hand)."""
    rng = np.random.default_rng(3)
    n = 40
    ks = np.resize(np.atleast_1d(seeds), n)
    errors = [0.3 + 0.05 * i / n + 0.02 * rng.standard_normal(k) for i, k in enumerate(ks)]
    Y, mode = fit.bootstrap_errors(errors, np.zeros(n), 4, 50_000, np.random.default_rng(4))
    assert mode == "seeds"
    means = np.array([e.mean() for e in errors])
    # Each deviation e - mean(e) scaled by sqrt(k/(k-1)), pooled over all points: one draw's
    # variance is their mean square (their mean is exactly 0).
    draw_var = sum((len(e) / (len(e) - 1) * (e - e.mean()) ** 2).sum() for e in errors) / ks.sum()
    if len(set(ks)) == 1:  # equal k: that is the unbiased pooled variance
        pooled = sum(((e - e.mean()) ** 2).sum() for e in errors) / (ks - 1).sum()
        assert draw_var == pytest.approx(pooled)
    assert Y.mean(0) == pytest.approx(means, abs=0.001)
    ratio = Y.var(0) / (draw_var / ks)
    assert ratio.mean() == pytest.approx(1.0, abs=0.02), ratio.mean()
    assert ratio == pytest.approx(np.ones(n), abs=0.06)

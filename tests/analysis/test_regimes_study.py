"""The regimes study of a results folder (analysis/regimes.study): runs classified from their
histories, boundaries over seeds, the L2 arm's measured effective rates placed among the
regimes, regimes.json's content and figure 9, on hand-built trials and histories."""
import json

import numpy as np
import pandas as pd
import pytest

from analysis import plots
from analysis import regimes as G

EPOCHS = 40
LRS = [0.01, 0.1, 1.0, 10.0, 100.0]


def trajectory(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(train loss, train error) per epoch of one kind of run."""
    e = np.arange(1, EPOCHS + 1)
    if kind == "converge":
        return 0.5 + 1.8 * np.exp(-e / 4), 0.9 * np.exp(-e / 4)
    if kind == "plateau":
        return 1.1 + 1.2 * np.exp(-e / 3), np.full(EPOCHS, 0.25)
    return np.full(EPOCHS, 2.36), np.full(EPOCHS, 0.86)  # a guess's loss, error below 0.87


def kinds(seed: int) -> list[str]:
    """Seed 1 leaves convergence one lr earlier than seeds 0 and 2."""
    first = 1 if seed == 1 else 2
    return ["converge"] * first + ["plateau"] * (4 - first) + ["guess"]


def build(arm_rates: list[tuple[float, float, float]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Trials and histories: the projection sweep over LRS x 3 seeds, plus L2 runs (lr 0.1,
    l2 0.01) whose conv layers settle at the given effective rates."""
    trials, history = [], []

    def add(tid, seed, lr, l2, update, loss, err, rates):
        trials.append({"trial_id": tid, "seed": seed, "lr": lr, "l2": l2, "update": update,
                       "optimizer": "sgd", "norm": "batch", "scale_invariant": True})
        for i in range(EPOCHS):
            history.append({"trial_id": tid, "epoch": i + 1, "step": 32 * (i + 1),
                            "train_loss": loss[i], "train_error": err[i], "diverged": False,
                            "test_error": 0.5 if i >= EPOCHS - 3 else np.nan,
                            **{f"conv{k + 1}_eff_lr": r for k, r in enumerate(rates)}})
    for seed in range(3):
        for lr, kind in zip(LRS, kinds(seed), strict=True):
            add(f"p{seed}_{lr}", seed, lr, 0.0, "projection", *trajectory(kind), (lr, lr, lr))
    for j, rates in enumerate(arm_rates):
        add(f"l2_{j}", 0, 0.1, 0.01, "l2", *trajectory("plateau"), rates)
    trials.append({"trial_id": "ordinary", "seed": 0, "lr": 0.1, "l2": 0.0, "update": "projection",
                   "optimizer": "sgd", "norm": "batch", "scale_invariant": False})
    return pd.DataFrame(trials), pd.DataFrame(history)


@pytest.fixture
def study():
    return G.study(*build([(0.05, 0.2, 0.8), (2.0, 3.0, 4.5)]))


def test_runs_are_classified_and_only_the_scale_invariant_projection_runs_count(study):
    assert len(study.runs) == 15  # the ordinary network's projection run is not one
    got = study.runs.set_index(["seed", "lr"])["regime"]
    assert got[(1, 0.1)] == G.EQUILIBRIUM and got[(0, 0.1)] == G.CONVERGENCE
    assert (study.runs[study.runs["lr"] == 100.0]["regime"] == G.DIVERGENCE).all()
    assert study.runs["test_error"].tolist() == [0.5] * 15


def test_boundaries_and_brackets_by_hand(study):
    s = study.summary.set_index("boundary")
    first, second = "convergence | chaotic equilibrium", "chaotic equilibrium | divergence"
    assert s.loc[first, "lr_median"] == pytest.approx(np.sqrt(0.1 * 1.0))
    assert s.loc[first, "lr_low"] == pytest.approx(np.sqrt(0.01 * 0.1))
    assert (s.loc[first, "bracket_low"], s.loc[first, "bracket_high"]) == (0.01, 1.0)
    assert s.loc[second, "lr_median"] == pytest.approx(np.sqrt(1000.0))
    assert s.loc[second, "n_seeds"] == 3


def test_l2_arm_rates_relaxations_and_their_regime(study):
    arm = study.l2_arm.set_index("trial_id")
    assert arm.loc["l2_0", "eff_lr"] == pytest.approx(0.2)  # geometric mean of 0.05, 0.2, 0.8
    assert (arm.loc["l2_0", "eff_lr_low"], arm.loc["l2_0", "eff_lr_high"]) == (0.05, 0.8)
    assert arm.loc["l2_0", "rate_regime"] == G.CONVERGENCE  # 0.2 < sqrt(0.1)
    assert arm.loc["l2_1", "rate_regime"] == G.EQUILIBRIUM  # 3 in [0.316, 31.6)
    assert arm.loc["l2_0", "regime"] == G.EQUILIBRIUM  # its own trajectory plateaus
    # steps / relaxation time 1/(2*lr*l2) = 1280 * 2 * 0.1 * 0.01
    assert arm.loc["l2_0", "relaxations"] == pytest.approx(2.56)


def test_the_projection_curve_at_the_l2_arms_rate_by_hand():
    """Seed-mean projection curve at lr 0.1 and 1: (0.5 + 0.5 + plateau)/3 and plateau; a
    rate halfway in log between them gets the mean of the two, one outside the range NaN."""
    study = G.study(*build([(np.sqrt(0.1), np.sqrt(0.1), np.sqrt(0.1)), (1e3, 1e3, 1e3)]))
    loss, _ = trajectory("converge")
    plateau, _ = trajectory("plateau")
    w = G.window(EPOCHS)
    at_01 = (2 * loss[-w:].mean() + plateau[-w:].mean()) / 3
    arm = study.l2_arm.set_index("trial_id")
    assert arm.loc["l2_0", "projection_train_loss"] == pytest.approx((at_01 + plateau[-w:].mean()) / 2)
    assert arm.loc["l2_0", "projection_test_error"] == pytest.approx(0.5)
    assert np.isnan(arm.loc["l2_1", "projection_train_loss"])


def test_rate_regime_needs_both_boundaries_for_the_middle(study):
    one = study.summary.iloc[:1]
    assert G.rate_regime(0.01, one) == G.CONVERGENCE
    assert G.rate_regime(3.0, one) == ""  # above the first, but the second is unknown
    assert G.rate_regime(1e4, study.summary) == G.DIVERGENCE
    assert G.rate_regime(float("nan"), study.summary) == ""


def test_json_and_figure(study):
    d = json.loads(json.dumps(G.to_dict(study)))
    assert d["rule_version"] == G.RULE_VERSION and len(d["runs"]) == 15
    assert len(d["boundaries_per_seed"]) == 6 and len(d["l2_arm"]) == 2
    fig = plots.regimes(study)
    assert fig is not None and len(fig.axes) == 2


def test_a_folder_without_regimes_runs_has_no_study():
    trials, history = build([])
    trials["scale_invariant"] = False
    s = G.study(trials, history)
    assert s.empty and plots.regimes(s) is None

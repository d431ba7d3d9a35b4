"""The regime classifier (analysis/regimes.py) on synthetic trajectories of each kind, with
each threshold tested on both sides, and the boundaries between regimes by hand."""
import numpy as np
import pandas as pd
import pytest

from analysis import regimes as G

EPOCHS = np.arange(1, 21)


def test_each_kind_of_trajectory():
    falling = 2.0 * np.exp(-EPOCHS / 3)  # to ~0.003
    plateau = 0.6 + 1.4 * np.exp(-EPOCHS / 2)  # settles at 0.6
    descending = 2.0 - 0.05 * EPOCHS  # still falling 5% an epoch
    low = np.full(20, 0.2)
    assert G.classify(falling, low) == G.CONVERGENCE
    assert G.classify(plateau, low) == G.EQUILIBRIUM
    assert G.classify(descending, low) == G.UNDECIDED
    assert G.classify(np.full(20, 2.3), np.full(20, 0.9)) == G.DIVERGENCE
    assert G.classify(falling, low, diverged=True) == G.DIVERGENCE
    assert G.classify(np.array([np.nan]), np.array([np.nan])) == G.DIVERGENCE


@pytest.mark.parametrize("end, regime", [(G.LOSS_FLOOR * 0.99, G.CONVERGENCE),
                                         (G.LOSS_FLOOR * 1.01, G.EQUILIBRIUM)])
def test_loss_floor_on_both_sides(end, regime):
    assert G.classify(np.full(10, end), np.full(10, 0.1)) == regime


@pytest.mark.parametrize("error, regime", [(G.CHANCE_TRAIN_ERROR - 0.001, G.EQUILIBRIUM),
                                           (G.CHANCE_TRAIN_ERROR, G.DIVERGENCE)])
def test_chance_on_both_sides(error, regime):
    assert G.classify(np.full(10, 1.5), np.full(10, error)) == regime


@pytest.mark.parametrize("error, regime", [(G.TRAIN_ERROR_FLOOR * 0.99, G.CONVERGENCE),
                                           (G.TRAIN_ERROR_FLOOR * 1.01, G.EQUILIBRIUM)])
def test_train_error_floor_on_both_sides(error, regime):
    """Bounded logits: a loss far above LOSS_FLOOR still converges when the error is ~0."""
    assert G.classify(np.full(10, 0.6), np.full(10, error)) == regime


@pytest.mark.parametrize("loss, regime", [(G.CHANCE_LOSS * 0.999, G.EQUILIBRIUM),
                                          (G.CHANCE_LOSS, G.DIVERGENCE)])
def test_chance_loss_on_both_sides(loss, regime):
    """A guess's loss is divergence even when the error hovers below CHANCE_TRAIN_ERROR."""
    assert G.classify(np.full(10, loss), np.full(10, 0.85)) == regime


@pytest.mark.parametrize("ratio, regime", [(np.exp(G.PLATEAU_DRIFT) * 0.999, G.EQUILIBRIUM),
                                           (np.exp(G.PLATEAU_DRIFT) * 1.001, G.UNDECIDED)])
@pytest.mark.parametrize("n_epochs", [6, 250])
def test_plateau_drift_on_both_sides(ratio, regime, n_epochs):
    w = G.window(n_epochs)
    loss = np.array([1.0 * ratio] * (n_epochs - w) + [1.0] * w)  # the windows before, then the last
    assert G.classify(loss, np.full(len(loss), 0.3)) == regime


def test_window_is_the_last_tenth_at_least_three_epochs():
    assert [G.window(n) for n in (3, 20, 30, 31, 250)] == [3, 3, 3, 4, 25]


def test_a_slow_descent_of_a_long_run_is_not_a_plateau():
    """Falling as 1/t over 250 epochs: its last 3 epochs look flat (drift 0.012), its last
    tenth does not (ln(237.5/212.5) = 0.11 > PLATEAU_DRIFT)."""
    epochs = np.arange(1, 251)
    loss = 50.0 / epochs + 0.0  # 0.2 at the end, above every floor
    assert abs(np.log(loss[-3:].mean() / loss[-6:-3].mean())) < G.PLATEAU_DRIFT
    assert G.classify(loss, np.full(250, 0.3)) == G.UNDECIDED


def test_boundaries_by_hand():
    lrs = [0.01, 0.1, 1.0, 10.0]
    runs = pd.DataFrame({"seed": [0] * 4 + [1] * 4, "lr": lrs * 2,
                         "regime": [G.CONVERGENCE, G.EQUILIBRIUM, G.EQUILIBRIUM, G.DIVERGENCE,
                                    G.CONVERGENCE, G.CONVERGENCE, G.EQUILIBRIUM, G.DIVERGENCE]})
    b = G.boundaries(runs).set_index(["seed", "boundary"])["lr"]
    first, second = "convergence | chaotic equilibrium", "chaotic equilibrium | divergence"
    assert b[(0, first)] == pytest.approx(np.sqrt(0.01 * 0.1))
    assert b[(1, first)] == pytest.approx(np.sqrt(0.1 * 1.0))
    assert b[(0, second)] == b[(1, second)] == pytest.approx(np.sqrt(10.0))
    s = G.boundary_summary(G.boundaries(runs)).set_index("boundary")
    assert s.loc[first, "lr_low"] == pytest.approx(np.sqrt(1e-3))
    assert s.loc[first, "lr_high"] == pytest.approx(np.sqrt(0.1)) and s.loc[first, "n_seeds"] == 2


def test_unordered_or_undecided_seeds_give_no_boundary():
    runs = pd.DataFrame({"seed": [0, 0, 0, 1, 1], "lr": [0.01, 0.1, 1.0, 0.01, 0.1],
                         "regime": [G.EQUILIBRIUM, G.CONVERGENCE, G.DIVERGENCE,
                                    G.CONVERGENCE, G.UNDECIDED]})
    assert G.boundaries(runs).empty

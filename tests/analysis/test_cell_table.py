"""The per-cell descriptive table (best error, dead channels) on hand-made points."""
import numpy as np
import pandas as pd
import pytest

from analysis.collapse import DEAD_COLUMNS, cell_table


def points() -> pd.DataFrame:
    """One cell, four points: two equilibrated, one not, one with every seed diverged."""
    rows = [  # lr, l2, fit_mean, equilibrated, conv1/conv2/conv3 dead fraction
        (0.1, 0.01, 0.40, True, (0.0, 0.1, 0.2)),
        (0.1, 0.10, 0.30, True, (0.0, 0.3, 0.6)),
        (0.2, 0.01, 0.35, False, (0.5, 0.5, 1.0)),
        (0.2, 0.10, np.nan, False, (np.nan, np.nan, np.nan)),
    ]
    return pd.DataFrame([{"cell": "sgd/batch/l2", "optimizer": "sgd", "norm": "batch",
                          "update": "l2", "setting": "", "lr": lr, "l2": l2, "fit_mean": e,
                          "equilibrated": eq, **dict(zip(DEAD_COLUMNS, dead, strict=True))}
                         for lr, l2, e, eq, dead in rows])


def test_best_point_and_dead_medians():
    [row] = cell_table(points()).to_dict("records")
    assert (row["best_error"], row["best_lr"], row["best_l2"]) == (0.30, 0.1, 0.10)
    assert row["n_points"] == 4 and row["n_used"] == 2
    # over the three non-diverged points / the two the fit uses / the worst point
    assert row["conv3_dead_median"] == pytest.approx(0.6)
    assert row["conv3_dead_used_median"] == pytest.approx(0.4)
    assert row["conv3_dead_max"] == pytest.approx(1.0)
    assert row["conv1_dead_median"] == 0.0 and row["conv2_dead_used_median"] == pytest.approx(0.2)

"""Synthetic sweeps with known answers shared by the analysis tests (not a test module)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.collapse import Checks, CheckSettings, run_checks
from analysis.load import load_results
from analysis.synthetic import SyntheticSweep, write_sweep

LRS = tuple(np.logspace(-2, 0, 5))
L2S = tuple(np.logspace(-4, -2, 5))
SGD_LRS = (0.025, 0.05, 0.1, 0.2)
SGD_PRODUCTS = (1e-3, 2e-3, 4e-3)


def u_shape(z: float, center: float, width: float = 1.0) -> float:
    """A test-error curve with an optimum: 0.1 at z = center, rising on both sides."""
    return 0.1 + 0.05 * ((z - center) / width) ** 2


def rising(o, n, u, lr, l2):
    """Test error grows with lr*l2: 0.03 from one diagonal to the next of SGD_PRODUCTS."""
    return 0.2 + 0.1 * (math.log10(lr * l2) + 3)


def diagonals(lrs, products, power=1):
    """(lr, l2) on the iso-lines lr^power * l2 = product."""
    return tuple((lr, float(f"{p / lr ** power:.12g}")) for p in products for lr in lrs)


def checks_for(folder: Path, error, settings: CheckSettings | None = None, sensitivity=False,
               **sweep) -> Checks:
    """run_checks on a synthetic sweep written to `folder`; 20,000 steps per epoch, so that
    every point with l2 > 0 equilibrates unless the sweep says otherwise."""
    sweep.setdefault("steps_per_epoch", 20_000)
    write_sweep(folder, SyntheticSweep(error, **sweep))
    return run_checks(load_results(str(folder)), settings or CheckSettings(), sensitivity)


def only(frame: pd.DataFrame, **match) -> pd.Series:
    """The one row of `frame` matching every column = value."""
    rows = frame
    for k, v in match.items():
        rows = rows[rows[k] == v]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def cell(frame: pd.DataFrame, name: str = "sgd/batch/l2") -> pd.Series:
    return only(frame, cell=name)


def jump_last_angle(folder: Path, jump: float, where=lambda rows: True) -> None:
    """Multiply conv1's angular update in the last epoch of the trials `where` selects by
    `jump`, on disk: in history and in the summary row (the last epoch's). Angle drift
    becomes |ln(jump)| (the synthetic prediction is constant in time)."""
    for kind in ("history", "trials"):
        for path in (folder / kind).glob("*.parquet"):
            t = pd.read_parquet(path)
            t.loc[(t["epoch"] == t["epoch"].max()) & where(t), "conv1_angular_update"] *= jump
            t.to_parquet(path, index=False)


def unsettled(folder: Path, error, jump: float = 2.0, where=lambda rows: True,
              points=None, **sweep):
    """Results of an sgd + batch-norm iso-line sweep whose conv1 angle jumps by `jump` in the
    last epoch of the trials `where` selects."""
    sweep.setdefault("steps_per_epoch", 20_000)
    write_sweep(folder, SyntheticSweep(error, points=points or diagonals(SGD_LRS, SGD_PRODUCTS),
                                       **sweep))
    jump_last_angle(folder, jump, where)
    return load_results(str(folder))

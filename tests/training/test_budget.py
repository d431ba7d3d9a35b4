"""One step budget (l2bn/budget.py) for the trainer, the analysis and the planner."""
from __future__ import annotations

import pandas as pd
import torch

from analysis.load import budget_steps as analysis_budget
from analysis.plan import plan_cells
from l2bn import budget
from l2bn.config import TrialConfig
from l2bn.data import epoch_batches


def test_budget_by_hand():
    assert budget.budget_steps("cifar10", None, 128, 10) == 390 * 10  # 50,000 // 128
    assert budget.budget_steps("synthetic", None, 128, 3) == 4 * 3    # 512 // 128
    assert budget.budget_steps("synthetic", 100, 32, 2) == 3 * 2
    assert budget.budget_steps("synthetic", None, 1000, 5) == 5       # one partial batch


def test_the_trainer_runs_the_budgeted_steps():
    gen = torch.Generator().manual_seed(0)
    for n, b in ((512, 128), (500, 128), (100, 1000)):
        assert len(epoch_batches(n, b, gen, torch.device("cpu"))) == budget.steps_per_epoch(n, b)


def test_analysis_fills_a_missing_steps_per_epoch_from_the_data_source():
    trials = pd.DataFrame({"data": ["synthetic", "cifar10", "synthetic"],
                           "n_train": [None, None, 64], "batch_size": [128, 128, 128],
                           "epochs": [3, 2, 4], "steps_per_epoch": [None, None, 7]})
    assert list(analysis_budget(trials)) == [4 * 3, 390 * 2, 7 * 4]


def test_the_planner_budgets_synthetic_data_by_its_512_images():
    """Batches of 1,024 from 512 images: one step an epoch, 20 in 20 epochs, room for 3
    relaxation times of the one point that relaxes in 5 steps (the others take 10 and 20);
    with 50,000 images (960 steps) all 4 would count, without the floor of one step none."""
    cfgs = [TrialConfig(data="synthetic", batch_size=1024, epochs=20, lr=lr, l2=l2, norm="batch")
            for lr in (0.5, 1.0) for l2 in (0.05, 0.1)]
    assert list(plan_cells(cfgs)["n_points"]) == [1]

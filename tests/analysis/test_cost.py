"""python -m analysis.cost: slot-hours and throughput of a sweep from its history rows."""
from pathlib import Path

import pandas as pd
import pytest

from analysis.cost import main, study_cost

RESULTS = Path(__file__).resolve().parents[2] / "results"


def history() -> pd.DataFrame:
    """Group A: models a, b for 2 epochs (10 s, 12 s); group B: c, d, e for 1 epoch (5 s),
    e diverged in it (its timings NaN, as l2bn/train.py writes them); 100 images per row."""
    rows = [(t, e, dt, tot) for t in "ab" for e, dt, tot in ((1, 10.0, 10.0), (2, 12.0, 22.0))]
    rows += [(t, 1, 5.0, 5.0) for t in "cd"] + [("e", 1, float("nan"), float("nan"))]
    frame = pd.DataFrame(rows, columns=["trial_id", "epoch", "epoch_time_s", "time_s"])
    return frame.assign(train_images=100)


def test_each_group_epoch_counts_once_and_every_model_image_counts():
    cost = study_cost(history())
    assert cost["group_epochs"] == 3 and cost["models"] == 5 and cost["model_epochs"] == 7
    assert cost["slot_hours"] == pytest.approx((10 + 12 + 5) / 3600)
    assert cost["model_images"] == 700
    assert cost["images_per_slot_s"] == pytest.approx(700 / 27)
    assert cost["models_per_group_median"] == 2


def test_groups_with_equal_epoch_times_but_other_running_times_stay_apart():
    """Two groups whose epoch 2 took the same 12 s are still two group-epochs."""
    h = history()
    other = h[h["trial_id"].isin(["a", "b"])].assign(trial_id=lambda f: f["trial_id"] + "2",
                                                      time_s=lambda f: f["time_s"] + 1)
    cost = study_cost(pd.concat([h, other]))
    assert cost["group_epochs"] == 5
    assert cost["slot_hours"] == pytest.approx((10 + 12 + 5 + 10 + 12) / 3600)


def test_breadth_matches_its_tune_trials():
    """results/breadth: 252 Tune trials of 4 models x 7 epochs = 1,764 group-epochs."""
    cost = study_cost(pd.read_parquet(RESULTS / "breadth" / "history" / "breadth.parquet"))
    assert cost["group_epochs"] == 1764 and cost["models_per_group_median"] == 4
    assert cost["model_images"] == 1008 * 7 * 8192


def test_cli_prints_one_line_and_rejects_bad_input(tmp_path, capsys):
    (tmp_path / "history").mkdir()
    h = history()
    h[["epoch_time_s", "time_s"]] *= 360  # 27 s -> 2.7 hours
    h.to_parquet(tmp_path / "history" / "h.parquet")
    assert main([str(tmp_path), "--cores-per-slot", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "2.70 slot-hours = 5.40 core-hours at 2 core(s)" in out
    assert main([str(tmp_path / "missing")]) == 2
    assert "results path not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--cores-per-slot", "0"])
    assert "--cores-per-slot: expected a positive number" in capsys.readouterr().err

"""The result format's one owner (l2bn/schema.py): diverged rows, summary rows, synthetic rows."""
import math
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.synthetic import SyntheticSweep, write_sweep
from l2bn.config import TrialConfig, field_types
from l2bn.schema import CONFIG_SCHEMA, HISTORY, HISTORY_SCHEMA, MEASURED, TRIALS, TRIALS_SCHEMA, final_row
from l2bn.store import ResultStore
from l2bn.train import Trial

SMALL = dict(data="synthetic", device="cpu", width=4, batch_size=64, n_test=128)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def test_a_later_diverged_epoch_has_nothing_measured_and_the_summary_keeps_the_last_finite(tmp_path):
    trial = Trial(TrialConfig(**SMALL, epochs=4, optimizer="sgd", lr=0.05, l2=0.0, norm="none"))
    (first,) = trial.run_epoch()
    trial.optimizer.lr.fill_(1e12)  # blow up from epoch 2 on
    (second,) = trial.run_epoch()
    assert first["diverged"] is False and second["diverged"] is True and trial.done
    assert second["epoch"] == 2 and second["trial_id"] == first["trial_id"]
    assert all(_missing(second[c]) for c in MEASURED), [c for c in MEASURED if not _missing(second[c])]
    assert set(second) == set(first)  # the same columns, only not measured
    summary = trial.summary()
    assert summary["epoch"] == 2 and summary["diverged"] is True
    assert {c: summary[c] for c in MEASURED} == {c: first[c] for c in MEASURED}
    store = ResultStore(str(tmp_path), "s")  # both rows fit the schema's types
    store.write_history(trial.history)
    store.write_trial(summary, "diverged", wall_time_s=1.0)
    history = pq.read_table(store.path(HISTORY, first["trial_id"])).to_pylist()
    assert [r["diverged"] for r in history] == [False, True]
    assert math.isnan(history[1]["test_error"]) and history[1]["steps_per_epoch"] is None
    saved = store.read_trial(first["trial_id"])
    assert saved["test_error"] == first["test_error"] and saved["epochs_done"] == 1


def test_final_row_of_a_completed_or_first_epoch_diverged_trial_is_its_last_row():
    done = [{"epoch": 1, "diverged": False, "test_error": 0.5},
            {"epoch": 2, "diverged": False, "test_error": 0.4}]
    assert final_row(done) is done[-1]
    early = [{"epoch": 1, "diverged": True, "test_error": math.nan}]
    assert final_row(early) is early[-1]


def test_synthetic_sweep_writes_through_the_store_with_the_schema(tmp_path):
    sweep = SyntheticSweep(error=lambda o, n, u, lr, l2: 0.3, lrs=(0.01, 1.0), l2s=(1e-3,),
                           seeds=(0,), diverge_lr=0.5)
    ids = write_sweep(tmp_path / "syn", sweep)
    for trial_id in ids:
        history = pq.read_table(tmp_path / "syn" / HISTORY / f"{trial_id}.parquet")
        trials = pq.read_table(tmp_path / "syn" / TRIALS / f"{trial_id}.parquet")
        assert history.schema.equals(HISTORY_SCHEMA) and trials.schema.equals(TRIALS_SCHEMA)
        rows, final = history.to_pylist(), trials.to_pylist()[0]
        if final["lr"] == 1.0:  # diverged in its last epoch, as the trainer writes it
            assert rows[-1]["diverged"] and all(_missing(rows[-1][c]) for c in MEASURED)
            assert final["status"] == "diverged" and final["epochs_done"] == sweep.epochs - 1
            assert final["test_error"] == rows[-2]["test_error"]
        else:
            assert final["status"] == "completed" and not any(r["diverged"] for r in rows)


@pytest.mark.parametrize("name", ["lr", "n_train", "data_dir", "augment", "optimizer"])
def test_one_type_table_feeds_validation_and_the_parquet_schema(name):
    base, optional = field_types()[name]
    arrow = {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_()}[base]
    assert next(f for f in CONFIG_SCHEMA if f.name == name).type == arrow
    assert optional == (name in ("n_train", "data_dir"))
    if optional:
        TrialConfig(**{name: None})  # accepted


def test_git_rev_says_when_the_working_tree_had_uncommitted_changes(monkeypatch):
    from l2bn import provenance

    monkeypatch.delenv("L2BN_GIT_REV", raising=False)
    for status, expected in (("", "abc123"), (" M l2bn/train.py", "abc123-dirty")):
        answers = {"rev-parse": "abc123", "status": status}
        monkeypatch.setattr(provenance, "_git", lambda *args, a=answers: a[args[0]])
        provenance.git_revision.cache_clear()
        assert provenance.git_revision() == expected
    provenance.git_revision.cache_clear()


def test_torchvision_version_is_read_without_importing_it():
    """The recorded version is torchvision.__version__, and a trial's process never imports
    torchvision for it (that import costs about 1 s per trial and probe process)."""
    code = ("import sys, torch\n"
            "from l2bn.config import TrialConfig\n"
            "from l2bn.train import Trial\n"
            "Trial([TrialConfig(data='synthetic', width=4, batch_size=8)])\n"
            "from l2bn.provenance import torchvision_version\n"
            "print('torchvision' in sys.modules, torchvision_version())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], check=True).stdout.split()
    import torchvision
    assert out == ["False", torchvision.__version__]

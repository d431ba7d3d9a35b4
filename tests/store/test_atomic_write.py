"""A Parquet write that fails halfway leaves the previous file whole and nothing half-written
under a name readers pick up (README: temporary name, then rename)."""
import os

import pandas as pd
import pyarrow.parquet as pq
import pytest

from l2bn.config import TrialConfig
from l2bn.store import ResultStore

CFG = TrialConfig(data="synthetic", epochs=2, width=4)


def row(epoch: int, test_error: float) -> dict:
    return {**CFG.to_row(), "trial_id": CFG.trial_id, "epoch": epoch, "test_error": test_error}


def write(store: ResultStore, kind: str, test_error: float) -> None:
    if kind == "trials":
        store.write_trial(row(2, test_error), "completed", wall_time_s=1.0)
    else:
        store.write_history([row(1, 0.9), row(2, test_error)])


def visible(folder) -> list[str]:
    """Names pyarrow.dataset and pandas read: they skip names starting with '.' or '_'."""
    return sorted(n for n in os.listdir(folder) if not n.startswith((".", "_")))


@pytest.mark.parametrize("kind", ["trials", "history"])
def test_failed_rewrite_keeps_the_old_file_readable(tmp_path, monkeypatch, kind):
    store = ResultStore(str(tmp_path), "s")
    write(store, kind, test_error=0.5)
    folder = tmp_path / "s" / kind
    assert visible(folder) == [f"{CFG.trial_id}.parquet"]
    written = []

    def fail_halfway(table, where, *args, filesystem=None, **kwargs):
        """Leave a truncated Parquet file where the writer was writing, then fail."""
        with filesystem.open_output_stream(str(where)) as f:
            f.write(b"PAR1 half a file")
        written.append(str(where))
        raise OSError("No space left on device")

    monkeypatch.setattr(pq, "write_table", fail_halfway)
    with pytest.raises(OSError, match="No space left"):
        write(store, kind, test_error=0.25)
    monkeypatch.undo()
    assert len(written) == 1  # the failing writer was the one used
    assert visible(folder) == [f"{CFG.trial_id}.parquet"]  # no partial file readers see
    frame = pd.read_parquet(store.uri(kind))  # the whole dataset still reads
    assert frame["test_error"].tolist() == ([0.5] if kind == "trials" else [0.9, 0.5])
    if kind == "trials":
        assert store.read_trial(CFG.trial_id)["test_error"] == 0.5


def test_trial_ids_lists_written_summaries_only(tmp_path):
    from l2bn.config import TrialConfig
    from l2bn.schema import config_columns
    from l2bn.store import ResultStore

    store = ResultStore(str(tmp_path), "s")
    assert store.trial_ids() == set()  # no trials/ folder yet
    cfg = TrialConfig(data="synthetic")
    store.write_trial({**config_columns(cfg), "epoch": 1}, "completed", 1.0)
    (tmp_path / "s" / "trials" / ".partial.parquet").write_bytes(b"")  # a writer's temp file
    assert store.trial_ids() == {cfg.trial_id}

"""Trial ids are pinned: the same config has the same id in every process and every release.

Ids name the Parquet files and tell a resumed sweep which trials are done, so an id that
drifts (Python's salted hash(), a changed serialisation) silently reruns or duplicates a
sweep. If a change to TrialConfig's science fields is deliberate, every existing sweep gets
new ids: update the values here knowingly, and say so in the README.
"""
import dataclasses
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from conftest import REPO

from l2bn.config import TrialConfig

GOLDEN = {  # config -> its trial_id, computed once (sha1 of the science fields, 12 hex)
    "441222982802": {},  # all defaults
    "894c1fe8b03e": dict(optimizer="adam", lr=1e-3, l2=0.0, norm="layer", update="projection",
                         l2_scope="normalized", epochs=4, batch_size=32, seed=2, width=16,
                         n_train=10000, n_test=2500, augment=False),
    "ad36bf082b46": dict(optimizer="sgd", lr=0.1, l2=0.001, width=16, n_train=10000,
                         n_test=2500, epochs=4, batch_size=32),
}


@pytest.mark.parametrize("expected, fields", GOLDEN.items(), ids=list(GOLDEN))
def test_trial_id_is_pinned(expected, fields):
    cfg = TrialConfig(**fields)
    assert cfg.trial_id == expected
    # ... and ignores where the trial runs
    assert cfg.replace(device="cpu", data_dir="/elsewhere").trial_id == expected


def test_trial_id_is_the_same_in_other_processes():
    """Fresh interpreters with different hash seeds give the pinned ids."""
    code = ("import json, sys\nfrom l2bn.config import TrialConfig\n"
            "print(json.dumps([TrialConfig(**f).trial_id for f in json.loads(sys.argv[1])]))")
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code, json.dumps(list(GOLDEN.values()))],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == list(GOLDEN), f"PYTHONHASHSEED={hash_seed}"


def test_shipped_results_keep_their_trial_ids():
    """The committed cpu sweep's files were named by the ids of that day; they still match."""
    names = {f.name for f in dataclasses.fields(TrialConfig)}
    rows = pq.read_table(REPO / "results" / "cpu" / "trials").to_pylist()
    assert len(rows) == 176
    for row in rows:
        # fields added since (scale_invariant) are absent from these files: their defaults
        assert TrialConfig(**{k: row[k] for k in names if k in row}).trial_id == row["trial_id"], row

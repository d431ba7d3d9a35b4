"""--fuse auto on CPUs: the choice from injected probe timings, the record in sweep.json, a
resumed sweep keeping its choice, and one real (tiny) probe."""
import pytest

from l2bn.config import TrialConfig
from l2bn.grid import groups
from l2bn.store import ResultStore
from sweeps import probe
from sweeps.errors import SweepError
from sweeps.fuse import FuseChoice, parse_fuse, resolve
from sweeps.run_grid import SweepOptions, check_same_grid

# Shaped like this machine's measurements at width 8 batch 32 (README "Performance"):
# fused groups win, most of all on one thread per trial with two trials side by side.
WIDTH8 = {(1, 1): 8000, (4, 1): 14000, (8, 1): 17000, (16, 1): 19000,
          (1, 2): 5900, (4, 2): 11000, (8, 2): 13500, (16, 2): 15500}
# ...and a shape where one model per stack is fastest (a wide net: the convs are the cost).
WIDE = {(1, 1): 2000, (4, 1): 1800, (8, 1): 1600, (16, 1): 1500,
        (1, 2): 1900, (4, 2): 1700, (8, 2): 1500, (16, 2): 1400}


def _grid(n_lr: int, n_l2: int, seeds: int = 1, width: int = 8) -> list[TrialConfig]:
    return [TrialConfig(data="synthetic", width=width, batch_size=32, lr=0.01 * (1 + i),
                        l2=1e-4 * j, seed=s)
            for s in range(seeds) for i in range(n_lr) for j in range(n_l2)]


def test_slot_use_counts_idle_slots_while_the_longest_trials_finish():
    assert probe.slot_use([4, 4], 2) == 1.0
    assert probe.slot_use([3, 3, 3], 2) == 0.75  # 2 waves, the second half empty
    assert probe.slot_use([9], 2) == 0.5
    assert probe.slot_use([4, 5, 4, 5], 2) == 1.0  # 5 + 4 on each slot
    assert probe.slot_use([8, 1], 2) == 9 / 16
    assert probe.slot_use([1] * 5, 1) == 1.0


def test_groups_are_cut_evenly():
    configs = _grid(3, 3)
    assert [len(g) for g in groups(configs, 8)] == [4, 5]
    assert [len(g) for g in groups(configs, 4)] == [3, 3, 3]
    assert [len(g) for g in groups(configs, 1)] == [1] * 9
    assert [len(g) for g in groups(configs + _grid(3, 3, seeds=2)[9:], None)] == [9, 9]
    assert [c for g in groups(configs, 4) for c in g] == configs  # grid order kept


def _sizes(group: int, ks=(1, 4, 8, 16), groups_=1) -> dict[int, list[int]]:
    """Tune trials' numbers of models per K for `groups_` lr x l2 groups of `group` points."""
    return {k: [len(g) for g in groups(_grid(group, 1, seeds=groups_), k)] for k in ks}


def test_candidates_are_capped_by_the_group_size_and_the_cpus():
    assert probe.candidate_ks(16) == [1, 4, 8, 16]
    assert probe.candidate_ks(9) == [1, 4, 8, 9]
    assert probe.candidate_ks(1) == [1]
    assert probe.candidate_threads(2) == [1, 2]
    assert probe.candidate_threads(8) == [1, 8]
    assert probe.candidate_threads(1) == [1]
    assert probe.candidate_threads(2, fixed=2) == [2]


def test_groups_where_the_probe_measured_them_faster_else_one():
    many = _sizes(32)  # every slot busy for every K
    assert probe.choose(WIDTH8, many, cpus=2) == (16, 1)
    assert probe.choose(WIDE, many, cpus=2) == (1, 1)
    # equal rates: the smaller K, then fewer threads
    assert probe.choose({(1, 1): 10.0, (4, 1): 10.0, (4, 2): 10.0}, many, cpus=2) == (1, 1)


def test_threads_follow_the_measured_rates_and_the_slots_the_grid_fills():
    many = _sizes(32)
    assert probe.choose({**WIDTH8, (16, 2): 20000}, many, cpus=2) == (16, 2)
    # one Tune trial of 16 cannot fill two one-thread slots (19000 * 0.5): two of 8 can (17000),
    # or, where 8 on one thread is slower than 16 on two, one trial of 16 on two threads
    assert probe.choose(WIDTH8, _sizes(16), cpus=2) == (8, 1)
    assert probe.choose({**WIDTH8, (8, 1): 15000}, _sizes(16), cpus=2) == (16, 2)
    # three trials of 4 on two slots use 3/4 of them: 14000 * 0.75 = 10500 < 11000
    assert probe.choose({(4, 1): 14000, (4, 2): 11000}, {4: [4, 4, 4]}, cpus=2) == (4, 2)


def _resolve(tmp_path, monkeypatch, rates, cpus_per_trial=None, configs=None, reprobe=False):
    calls = []

    def fake_measure(cfg, ks, threads, cpus, window_s=0.5):
        calls.append((ks, threads, cpus))
        return {(k, t): rates[(k, t)] for k in ks for t in threads}

    monkeypatch.setattr(probe, "measure", fake_measure)
    configs = configs or _grid(8, 4)  # one group of 32 points
    store = ResultStore(str(tmp_path), "s")
    return (resolve(None, cpus_per_trial, 0.0, configs, store, 2, local=True, reprobe=reprobe),
            calls, configs, store)


def test_auto_records_the_probe_in_sweep_json_and_a_resume_keeps_it(tmp_path, monkeypatch, capsys):
    choice, calls, configs, store = _resolve(tmp_path, monkeypatch, WIDTH8)
    assert calls == [([1, 4, 8, 16], [1, 2], 2)]
    assert (choice.fuse, choice.cpus_per_trial) == (16, 1.0)
    out = capsys.readouterr().out
    assert ("K=16  threads=1 x 2 trials:     19000, 2 Tune trials keep 100% of the slots busy"
            "  <- chosen") in out
    opts = SweepOptions(name="s", storage=str(tmp_path), fuse=choice.fuse,
                        cpus_per_trial=choice.cpus_per_trial, fuse_probe=choice.probe)
    check_same_grid(store, configs, opts)
    meta = store.read_meta()
    assert meta["options"]["fuse"] == 16 and meta["options"]["cpus_per_trial"] == 1.0
    record = meta["fuse_probe"]
    assert (record["k"], record["threads"], record["cpus"]) == (16, 1, 2)
    assert {(r["k"], r["threads"]): r["model_images_per_s"] for r in record["rates"]} == WIDTH8
    # a resume with auto measures nothing and keeps K = 16 even if one-model stacks now win
    again, calls, _, _ = _resolve(tmp_path, monkeypatch, WIDE)
    assert calls == [] and (again.fuse, again.cpus_per_trial) == (16, 1.0)
    assert again.probe == record


def test_given_cpus_per_trial_fixes_the_threads_and_a_number_is_not_probed(tmp_path, monkeypatch):
    choice, calls, _, _ = _resolve(tmp_path, monkeypatch, WIDTH8, cpus_per_trial=2.0)
    assert calls == [([1, 4, 8, 16], [2], 2)]
    assert (choice.fuse, choice.cpus_per_trial) == (16, 2.0)
    choice, calls, _, _ = _resolve(tmp_path / "half", monkeypatch, WIDTH8, cpus_per_trial=0.5)
    assert calls == [([1, 4, 8, 16], [1], 2)] and choice.cpus_per_trial == 0.5
    store = ResultStore(str(tmp_path), "t")
    assert resolve(4, None, 0.0, _grid(4, 4), store, 2, local=True) == FuseChoice(4, 1.0)
    # on a GPU auto is whole groups, as before; on a cluster 1, without a probe
    assert resolve(None, None, 0.5, _grid(4, 4), store, 2, local=True) == FuseChoice(None, 1.0)
    assert resolve(None, None, 0.0, _grid(4, 4), store, 2, local=False) == FuseChoice(1, 1.0)
    with pytest.raises(SweepError, match="positive integer"):
        parse_fuse("0")


def test_the_probe_times_the_grid_shape_group_by_group(tmp_path, monkeypatch):
    """Groups are cut from lr x l2 within one seed: K is capped by that group's size."""
    configs = _grid(3, 3, seeds=2)
    assert [len(g) for g in groups(configs, None)] == [9, 9]
    _, calls, _, _ = _resolve(tmp_path, monkeypatch, {(k, t): float(k) for k in (1, 4, 8, 9)
                                                      for t in (1, 2)}, configs=configs)
    assert calls == [([1, 4, 8, 9], [1, 2], 2)]


def test_a_real_probe_reports_model_images_per_second():
    """Two processes side by side, K in (1, 2): a rate per pair, in a plausible range."""
    cfg = TrialConfig(data="synthetic", width=4, batch_size=8, device="cpu")
    rates = probe.measure(cfg, [1, 2], [1], cpus=2, window_s=0.05)
    assert set(rates) == {(1, 1), (2, 1)}
    assert all(10 < r < 1e7 for r in rates.values()), rates


def test_a_new_sweep_of_the_same_shape_reuses_the_cached_probe(tmp_path, monkeypatch, capsys):
    """The rates are cached per machine and shape: a new sweep of that shape measures nothing
    and chooses from them for its own groups; --reprobe, another shape or a broken cache
    file measure again."""
    first, calls, _, _ = _resolve(tmp_path / "a", monkeypatch, WIDTH8)
    assert calls and not first.probe["reused"] and (first.fuse, first.cpus_per_trial) == (16, 1.0)
    # same shape, groups of 16: one trial of 16 cannot fill two slots -> K = 8 (see above)
    again, calls, _, store = _resolve(tmp_path / "b", monkeypatch, WIDE, configs=_grid(4, 4))
    assert calls == [] and again.probe["reused"] and again.fuse == 8
    assert again.probe["measured"] == first.probe["measured"] and again.probe["seconds"] == 0.0
    assert "reused the probe of " + first.probe["measured"] in capsys.readouterr().out
    _, calls, _, _ = _resolve(tmp_path / "c", monkeypatch, WIDE, reprobe=True)
    assert len(calls) == 1
    _, calls, _, _ = _resolve(tmp_path / "d", monkeypatch, WIDE, configs=_grid(8, 4, width=16))
    assert len(calls) == 1
    probe.cache_path().write_text("not json")
    fresh, calls, _, _ = _resolve(tmp_path / "e", monkeypatch, WIDE)
    assert len(calls) == 1 and fresh.fuse == 1  # WIDE measured anew: one model per stack
    assert probe.cached(probe.cache_key(_grid(1, 1)[0], [1, 4, 8, 16], [1, 2], 2))["rates"] == WIDE


def test_a_sweep_with_other_candidates_measures_again_and_chooses_from_its_own(
        tmp_path, monkeypatch, capsys):
    """Same shape, another group size: groups of 9 probe K in (1, 4, 8, 9), not the first
    sweep's (1, 4, 8, 16), so its rates are not reused (choose would look up K = 9 in them).
    It measures its own candidates and picks K = 9 on two threads: per slot use, the scores
    are K=1 8000*0.9, K=4 14000*0.75, K=8 17000*0.9 = 15300 (one thread) and K=9 16000*1.0
    (two threads, one slot)."""
    first, calls, _, _ = _resolve(tmp_path / "a", monkeypatch, WIDTH8)  # one group of 32
    assert calls == [([1, 4, 8, 16], [1, 2], 2)] and first.fuse == 16
    nine = {**WIDTH8, (9, 1): 18000, (9, 2): 16000}
    again, calls, _, _ = _resolve(tmp_path / "b", monkeypatch, nine, configs=_grid(3, 3))
    assert calls == [([1, 4, 8, 9], [1, 2], 2)]
    assert not again.probe["reused"] and (again.fuse, again.cpus_per_trial) == (9, 2.0)
    assert {(r["k"], r["threads"]) for r in again.probe["rates"]} == {
        (k, t) for k in (1, 4, 8, 9) for t in (1, 2)}
    # both probes are cached, each under its own candidates: a third sweep of either reuses
    shape = _grid(1, 1)[0]
    for ks, rates in (([1, 4, 8, 16], WIDTH8), ([1, 4, 8, 9], {k: nine[k] for k in nine if k[0] != 16})):
        assert probe.cached(probe.cache_key(shape, ks, [1, 2], 2))["rates"] == rates
    _, calls, _, _ = _resolve(tmp_path / "c", monkeypatch, WIDE, configs=_grid(3, 3))
    assert calls == []


@pytest.mark.parametrize("flags, expected", [([], 1), (["--num-cpus", "3"], 3),
                                             (["--address", "127.0.0.1:1"], None)])
def test_local_ray_gets_the_cpus_the_probe_planned_for(tmp_path, monkeypatch, flags, expected):
    """Under taskset/Slurm (affinity: one CPU) the local Ray instance is started with the CPU
    count the fuse choice assumed, not Ray's default of every CPU; a cluster keeps its own."""
    import sweeps.fuse
    import sweeps.run_grid as run_grid

    class Stop(Exception):
        pass

    seen = {}

    def fake_run_sweep(configs, opts):
        seen["num_cpus"] = opts.num_cpus
        raise Stop

    monkeypatch.setattr(sweeps.fuse.os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(run_grid, "run_sweep", fake_run_sweep)
    with pytest.raises(Stop):
        run_grid.main(["--grid", "smoke", "--set", "data=synthetic", "--set", "n_train=256",
                       "--fuse", "1",
                       "--storage", str(tmp_path), *flags])
    assert seen["num_cpus"] == expected

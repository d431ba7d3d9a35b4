"""Grid files -> exact trial lists: shipped grids' counts and exclusions, ranges, bad files."""
from __future__ import annotations

import itertools
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, grid_error, grid_file

from l2bn.config import TrialConfig
from l2bn.grid import GRID_DIR, GridError, load_grid, log_range, parse_value, summary
from sweeps.run_grid import main

PAPER_COUNT = 4 * 7 * 7 * (5 * 2 - 1) * 3  # optimizers x lr x l2 x (norm, update) x seeds


def configs(name: str, **overrides) -> list[TrialConfig]:
    return load_grid(name, overrides).configs()


def write(tmp_path: Path, text: str) -> str:
    return grid_file(tmp_path, text, "bad.yaml")


# --- ranges and values -------------------------------------------------------------------

def test_log_range_is_half_decades_with_both_ends():
    got = log_range(1e-3, 1, 2, "here")
    want = [1e-3, 10 ** -2.5, 1e-2, 10 ** -1.5, 1e-1, 10 ** -0.5, 1.0]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[0] == 0.001 and got[2] == 0.01 and got[-1] == 1.0  # decades are exact
    assert log_range(1e-6, 1e-1, 1, "here") == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    assert log_range(0.1, 0.1, 3, "here") == [0.1]


@pytest.mark.parametrize("start, stop, per_decade", [(0, 1, 2), (1, 0.1, 2), (1e-3, 0.5, 2),
                                                      (1e-3, 1, 0), (1e-3, 1, 1.5)])
def test_log_range_rejects_bad_ranges(start, stop, per_decade):
    with pytest.raises(GridError, match="here"):
        log_range(start, stop, per_decade, "here")


def test_yaml_exponents_are_floats():
    assert parse_value("1e-3") == 0.001 and parse_value("null") is None
    assert parse_value("true") is True and parse_value("sgd") == "sgd" and parse_value("3") == 3


# --- shipped grids -----------------------------------------------------------------------

def test_shipped_grids_are_smoke_cpu_paper():
    assert {p.stem for p in GRID_DIR.glob("*.yaml")} >= {"smoke", "cpu", "paper"}


def test_paper_grid_count_and_composition():
    trials = configs("paper")
    print(f"paper grid: {len(trials)} trials")
    assert len(trials) == PAPER_COUNT == 5292
    rows = [t.to_row() for t in trials]
    assert {r["optimizer"] for r in rows} == {"sgd", "momentum", "adam", "adamw"}
    sgd_lrs = sorted({r["lr"] for r in rows if r["optimizer"] in ("sgd", "momentum")})
    adam_lrs = sorted({r["lr"] for r in rows if r["optimizer"] in ("adam", "adamw")})
    for lrs in (sgd_lrs, adam_lrs):  # 3 decades in half-decade steps
        assert len(lrs) == 7 and lrs[-1] / lrs[0] == pytest.approx(1e3)
    assert sgd_lrs[0] / adam_lrs[0] == pytest.approx(100)  # the families get different ranges
    l2s = {o: sorted({r["l2"] for r in rows if r["optimizer"] == o}) for o in ("sgd", "adam", "adamw")}
    assert l2s["sgd"] == [0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]  # momentum likewise
    assert l2s["adam"] == [0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1]  # moved so every cell can be
    assert l2s["adamw"] == [0, 1e-4, 1e-3, 1e-2, 1e-1, 1, 10]  # decided (analysis.plan)
    assert {r["norm"] for r in rows} == {"none", "batch", "weight", "layer", "instance"}
    assert {r["seed"] for r in rows} == {0, 1, 2}
    assert not any(r["norm"] == "none" and r["update"] == "projection" for r in rows)
    assert all(r["n_train"] is None and r["n_test"] is None and r["data"] == "cifar10"
               for r in rows)
    assert all(r["epochs"] >= 100 for r in rows)
    assert len({t.trial_id for t in trials}) == len(trials)
    # every cell of the full product is there exactly once, minus the exclusion
    cells = Counter((r["optimizer"], r["norm"], r["update"]) for r in rows)
    assert set(cells.values()) == {7 * 7 * 3}
    assert len(cells) == 4 * 9


def test_smoke_grid_is_small_real_data_one_epoch():
    trials = configs("smoke")
    assert 4 <= len(trials) <= 8
    assert all(t.data == "cifar10" and t.epochs == 1 and t.n_train <= 2048 for t in trials)
    assert {t.update for t in trials} == {"l2", "projection"}
    assert {t.optimizer for t in trials} == {"sgd", "adam"}


def test_cpu_grid_covers_the_study_in_small():
    trials = configs("cpu")
    rows = [t.to_row() for t in trials]
    for opt in ("sgd", "adam"):
        for update in ("l2", "projection"):
            cell = [r for r in rows if r["optimizer"] == opt and r["norm"] == "batch"
                    and r["update"] == update and r["l2_scope"] == "all"]
            lrs, l2s = {r["lr"] for r in cell}, {r["l2"] for r in cell}
            assert len(lrs) >= 4 and len(l2s) >= 4 and 0 in l2s
            assert len(cell) == len(lrs) * len(l2s)  # the full (lr, l2) product
    assert any(r["norm"] == "none" for r in rows)
    assert any(r["l2_scope"] == "normalized" for r in rows)
    assert not any(r["norm"] == "none" and (r["update"] == "projection"
                                            or r["l2_scope"] == "normalized") for r in rows)
    assert all(r["data"] == "cifar10" for r in rows)
    # 2 optimizers x 4 lr x 6 l2 x 3 batch-norm arms + 2 x 4 x 4 norm=none control points
    assert len(trials) == 2 * 4 * 6 * 3 + 2 * 4 * 4 == 176


def test_by_axis_picks_values_per_optimizer(tmp_path):
    path = write(tmp_path, """
axes:
  optimizer: [sgd, adam]
  lr: {by: optimizer, sgd: [0.1, 1], adam: {start: 1e-4, stop: 1e-3, per_decade: 1}}
  seed: [0, 1]
""")
    rows = [(t.optimizer, t.lr, t.seed) for t in load_grid(path).configs()]
    assert rows == [(o, lr, s) for o, lrs in (("sgd", [0.1, 1.0]), ("adam", [1e-4, 1e-3]))
                    for lr in lrs for s in (0, 1)]


def test_exclusions_and_lists_in_exclusions(tmp_path):
    path = write(tmp_path, """
axes:
  norm: [none, batch, layer]
  update: [l2, projection]
  l2_scope: [all, normalized]
exclude:
  - {norm: none, update: projection}
  - {norm: none, l2_scope: normalized}
  - {norm: [batch, layer], update: projection, l2_scope: normalized}
""")
    got = {(t.norm, t.update, t.l2_scope) for t in load_grid(path).configs()}
    want = {c for c in itertools.product(["none", "batch", "layer"], ["l2", "projection"],
                                         ["all", "normalized"])
            if not (c[0] == "none" and (c[1] == "projection" or c[2] == "normalized"))
            and not (c[1] == "projection" and c[2] == "normalized")}
    assert got == want and len(got) == 1 + 2 * 3


def test_set_overrides_a_fixed_field_or_collapses_an_axis():
    trials = configs("smoke", epochs=3, device="cpu")
    assert {t.epochs for t in trials} == {3} and {t.device for t in trials} == {"cpu"}
    assert len(configs("smoke", optimizer="sgd")) == len(configs("smoke")) // 2
    with pytest.raises(GridError, match="unknown TrialConfig field 'epoch'"):
        configs("smoke", epoch=3)
    with pytest.raises(GridError, match="'epochs'"):
        configs("smoke", epochs=0)


def test_summary_counts_per_value():
    text = summary(configs("smoke"))
    assert text.startswith("8 trials")
    assert "optimizer  adam: 4  sgd: 4" in text


# --- bad grid files: each names the file, the axis and the value --------------------------

BAD = {
    "unknown axis": ("axes: {optimiser: [sgd]}", ["axis 'optimiser'", "unknown axis"]),
    "invalid value": ("axes: {norm: [batch, batchnorm]}", ["axis 'norm'", "'batchnorm'"]),
    "negative l2": ("axes: {l2: [0, -1e-3]}", ["axis 'l2'", "-0.001"]),
    "wrong type": ("axes: {width: [8, wide]}", ["axis 'width'", "'wide'"]),
    "empty axis": ("axes: {lr: []}", ["axis 'lr'", "empty"]),
    "empty by axis": ("axes: {optimizer: [sgd], lr: {by: optimizer}}", ["axis 'lr'", "empty"]),
    "bad range": ("axes: {lr: {start: 1e-3, stop: 0.5, per_decade: 2}}", ["axis 'lr'", "0.5"]),
    "range keys": ("axes: {lr: {start: 1e-3, end: 1}}", ["axis 'lr'", "'end'"]),
    "missing by key": ("axes: {optimizer: [sgd, adam], lr: {by: optimizer, sgd: [0.1]}}",
                       ["axis 'lr'", "optimizer='adam'"]),
    "by a later axis": ("axes: {lr: {by: optimizer, sgd: [0.1]}, optimizer: [sgd]}",
                        ["axis 'lr'", "listed before"]),
    "bad by key": ("axes: {optimizer: [sgd], lr: {by: optimizer, sgd: [0.1], sdg: [1]}}",
                   ["axis 'lr'", "'sdg'"]),
    "repeated value": ("axes: {seed: [0, 1, 0]}", ["axis 'seed'", "repeated", "0"]),
    "unknown fixed": ("fixed: {epoch: 3}", ["fixed field 'epoch'"]),
    "invalid fixed": ("fixed: {batch_size: 0}", ["fixed field 'batch_size'", "0"]),
    "fixed and axis": ("fixed: {seed: 0}\naxes: {seed: [0, 1]}", ["axis 'seed'", "both"]),
    "unknown top key": ("axis: {seed: [0]}", ["unknown top-level key", "'axis'"]),
    "not excluded": ("axes: {norm: [none, batch], update: [l2, projection]}",
                     ["norm: none", "update: projection", "exclude"]),
    "bad exclusion": ("axes: {seed: [0]}\nexclude: [{nrom: none}]", ["exclude entry 1", "'nrom'"]),
    "all excluded": ("axes: {seed: [0]}\nexclude: [{seed: 0}]", ["empty"]),
    "not yaml": ("axes: {seed: [0, 1}", ["not valid YAML"]),
    "not a mapping": ("- seed", ["expected a mapping"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_grid_file_fails_naming_file_axis_value(tmp_path, case):
    message = grid_error(tmp_path, BAD[case][0])
    for needle in BAD[case][1]:
        assert needle in message, (case, message)


def test_cli_reports_a_bad_grid_before_starting_anything(tmp_path, capsys):
    path = write(tmp_path, "axes: {norm: [batch, batchnorm]}\n")
    assert main(["--grid", path, "--storage", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert path in err and "'batchnorm'" in err
    assert not (tmp_path / "out").exists()
    assert main(["--grid", "nosuchgrid", "--dry-run"]) == 2
    assert "shipped grids" in capsys.readouterr().err


def test_dry_run_prints_count_and_summary_without_importing_ray():
    code = ("import sys; from sweeps.run_grid import main; rc = main(['--grid', 'paper', "
            "'--dry-run', '--set', 'epochs=2']); assert 'ray' not in sys.modules, 'ray imported'; "
            "sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{PAPER_COUNT} trials in grid 'paper'")
    assert "epochs=2" in out.stdout and "optimizer  adam: 1323" in out.stdout


def test_quick_grid_can_decide_the_collapse_by_the_analysis_rules():
    """The README's main command must end in a decidable verdict under rules 3: SGD + batch
    norm, several seeds (lack of fit and the iso-line test need seed noise), points on >= 2
    diagonals of lr*l2 with 3 lr each, the analysis' own forecast (analysis.plan: 3
    relaxation times in the budget) decidable, and the averaged outcome's window (the last
    eval_last epochs) starting after 2 relaxation times of the slowest point."""
    from analysis.plan import plan_cells
    from l2bn import theory

    configs = load_grid("quick").configs()
    assert {(c.data, c.optimizer, c.norm, c.update) for c in configs} == {("cifar10", "sgd", "batch", "l2")}
    assert len({c.seed for c in configs}) >= 3
    [cell] = plan_cells(configs).to_dict("records")
    assert cell["decidable"] and cell["n_points"] == 9
    diagonals = Counter(round(c.lr * c.l2, 12) for c in configs if c.seed == 0)
    assert len(diagonals) >= 2 and set(diagonals.values()) == {3}
    for c in configs:
        steps_before_window = (c.epochs - c.eval_last) * (c.n_train // c.batch_size)
        assert steps_before_window >= 2 * theory.relaxation_steps("sgd", c.lr, c.l2), c


def test_cross_field_axes_are_judged_per_point(tmp_path):
    """scale_invariant=True is valid only with a norm and l2_scope=normalized: as an axis value
    it is checked on its own (type), and the combination on each point of the product."""
    text = """
axes:
  norm: [none, batch]
  l2_scope: [all, normalized]
  scale_invariant: [false, true]
exclude:
  - {norm: none, l2_scope: normalized}
  - {norm: none, scale_invariant: true}
"""
    path = write(tmp_path, text + "  - {scale_invariant: true, l2_scope: all}\n")
    got = {(t.norm, t.l2_scope, t.scale_invariant) for t in load_grid(path).configs()}
    assert got == {("none", "all", False), ("batch", "all", False),
                   ("batch", "normalized", False), ("batch", "normalized", True)}
    with pytest.raises(GridError) as info:  # the bad combination left in: named, as a point
        load_grid(write(tmp_path, text)).configs()
    assert "scale_invariant: True" in str(info.value) and "l2_scope: all" in str(info.value)
    with pytest.raises(GridError, match="axis 'scale_invariant'.*'yes'"):
        load_grid(write(tmp_path, "axes: {scale_invariant: [false, 'yes']}\n")).configs()


def test_v2_grid_has_every_arm_two_seeds_and_decidable_cells():
    """Issue 11's design: sgd and adam x batch and weight norm x four arms, a norm=none control
    on >= 4 l2 values, 2 seeds everywhere, every cell decidable by analysis.plan."""
    from analysis.plan import plan_cells

    trials = configs("v2")
    arms = Counter((t.optimizer, t.norm, t.update, t.l2_scope, t.scale_invariant) for t in trials)
    for opt, norm in itertools.product(("sgd", "adam"), ("batch", "weight")):
        for arm in (("l2", "all", False), ("l2", "normalized", False),
                    ("projection", "normalized", False), ("l2", "normalized", True)):
            assert arms[(opt, norm, *arm)] == 3 * 3 * 2  # 3 lr x 3 l2 x 2 seeds
        control = [t for t in trials if t.optimizer == opt and t.norm == "none"]
        assert len({t.l2 for t in control}) >= 4 and len(control) == 3 * 4 * 2
    assert {t.seed for t in trials} == {0, 1} and len(trials) == 336
    assert plan_cells(trials)["decidable"].all()


def test_v3_grid_is_on_iso_lines_decidable_and_out_of_the_dying_zone():
    """Issue 17's design: sgd, momentum, adam x batch/weight x three arms, 3 seeds, 9 points on
    3 diagonals of 3 lr each; every cell decidable by analysis.plan; weight norm's l2 < 0.3 and
    sgd-like lr/(1-mu)*l2 < 5e-3 (v2's dying zone); adam's projection has >= 2 lr and 2 l2
    below v2's large-l2 threshold (~0.19)."""
    from analysis.plan import plan_cells
    from l2bn.theory import iso_slope

    trials = configs("v3")
    arms = Counter((t.optimizer, t.norm, t.update, t.scale_invariant) for t in trials)
    assert set(arms.values()) == {9 * 3} and len(arms) == 3 * 2 * 3 and len(trials) == 486
    for opt in ("sgd", "momentum", "adam"):
        points = {(t.lr, t.l2) for t in trials if t.optimizer == opt}
        products = Counter(round(lr ** (1 / iso_slope(opt)) * l2, 15) for lr, l2 in points)
        assert len(products) == 3 and set(products.values()) == {3}
    assert all(t.l2 < 0.3 and t.lr / (1 - t.momentum) * t.l2 < 5e-3
               for t in trials if t.optimizer != "adam")
    low = {(t.lr, t.l2) for t in trials if t.optimizer == "adam" and t.update == "projection"
           and t.l2 < 0.19}
    assert len({lr for lr, _ in low}) >= 2 and len({l2 for _, l2 in low}) >= 2
    assert {t.eval_last for t in trials} == {3} and {t.seed for t in trials} == {0, 1, 2}
    assert plan_cells(trials)["decidable"].all()


def test_v4b_grid_is_v4s_projection_arm_and_decides_at_v4s_noise():
    """Issue 27's third cell: the projection arm of v4's network and budget, v4's lr axis, l2
    spanning v4's whole l2 range, 2 seeds; analysis.plan has no collapse cell to forecast (it
    used to raise on such a grid) and its power report decides the l2 effect inside the 0.02
    margin at v4's assumed seed SD 0.006 in a family of this cell's 2 tests."""
    from analysis import power
    from analysis.plan import plan_cells

    trials, v4 = configs("v4b"), configs("v4")
    assert len(trials) == 18 and {t.update for t in trials} == {"projection"}
    assert {t.lr for t in trials} == {t.lr for t in v4}
    span = [(min(t.l2 for t in g), max(t.l2 for t in g)) for g in (trials, v4)]
    assert span[0] == span[1]
    same = ("data", "epochs", "eval_last", "batch_size", "width", "augment", "n_train", "optimizer",
            "norm", "l2_scope")
    assert {tuple(getattr(t, f) for f in same) for t in trials} == {tuple(getattr(v4[0], f) for f in same)}
    assert {t.scale_invariant for t in trials} == {False}
    assert plan_cells(trials).empty
    [cell] = power.power_table(trials, 0.006, 0.02).to_dict("records")
    assert cell["n_trials"] == 18 and cell["decides"] and cell["l2 effect min margin"] < 0.0125


def test_v4c_grid_spans_64x_of_adams_product_and_decides_at_its_pilots_gradients():
    """Issue 27's fourth cell: adam + batch norm `normalized` at v4's shape, 4 diagonals of
    lr^2*l2 4x apart (1e-9..6.4e-8) x 3 lr x 3 seeds; with the pilot's measured gradient
    norms (results/v4c/pilot) the two largest products are forecast ready, which its spline
    (dof 4) needs, and the power report decides both margins."""
    from analysis import power
    from analysis.plan import measured_grad, plan_cells

    trials, v4 = configs("v4c"), configs("v4")
    assert len(trials) == 36
    assert {(t.optimizer, t.norm, t.update) for t in trials} == {("adam", "batch", "l2")}
    products = sorted({round(t.lr ** 2 * t.l2, 20) for t in trials})
    assert products == pytest.approx([1e-9, 4e-9, 1.6e-8, 6.4e-8])
    same = ("data", "epochs", "eval_last", "batch_size", "width", "augment", "n_train", "l2_scope")
    assert {tuple(getattr(t, f) for f in same) for t in trials} == {tuple(getattr(v4[0], f) for f in same)}
    grad = measured_grad(str(REPO / "results" / "v4c" / "pilot"))
    [cell] = plan_cells(trials, grad).to_dict("records")
    assert (cell["n_points"], cell["dof"], cell["decidable"]) == (6, 4, True)
    [row] = power.power_table(trials, 0.006, 0.03, grad).to_dict("records")
    assert row["decides"] and row["n_ready"] == 6

"""Iso-line l2 axes (`l2: {iso: lr, ...}`): hand-computed l2 values on the theory's diagonals
lr^(1/s) * l2 = product, their invariants, one-line errors, exclude and --set, the dry run."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import grid_error, grid_file

from l2bn.grid import load_grid
from sweeps.run_grid import main

GRID = """
axes:
  optimizer: [sgd, adam]
  lr:
    by: optimizer
    sgd: [0.025, 0.05, 0.1]
    adam: [0.01, 0.02, 0.04]
  l2:
    iso: lr
    sgd: [1e-3, 2e-3]
    adam: [2e-5, 4e-5]
  seed: [0, 1]
"""
# by hand: sgd l2 = product / lr, adam l2 = product / lr^2
SGD = {1e-3: [(0.025, 0.04), (0.05, 0.02), (0.1, 0.01)],
       2e-3: [(0.025, 0.08), (0.05, 0.04), (0.1, 0.02)]}
ADAM = {2e-5: [(0.01, 0.2), (0.02, 0.05), (0.04, 0.0125)],
        4e-5: [(0.01, 0.4), (0.02, 0.1), (0.04, 0.025)]}


def write(tmp_path: Path, text: str) -> str:
    return grid_file(tmp_path, text, "iso.yaml")


def points(trials) -> list[tuple]:
    return [(t.optimizer, t.lr, t.l2, t.seed) for t in trials]


def test_iso_grid_exact_l2_values_and_order(tmp_path):
    trials = load_grid(write(tmp_path, GRID)).configs()
    per_lr = [("sgd", 0.025, 0.04, 0.08), ("sgd", 0.05, 0.02, 0.04), ("sgd", 0.1, 0.01, 0.02),
              ("adam", 0.01, 0.2, 0.4), ("adam", 0.02, 0.05, 0.1), ("adam", 0.04, 0.0125, 0.025)]
    want = [(opt, lr, l2, seed) for opt, lr, *l2s in per_lr for l2 in l2s for seed in (0, 1)]
    assert len(trials) == 2 * 3 * 2 * 2 == 24
    assert points(trials) == want  # exact floats: 12 significant digits, like log_range


def test_each_diagonal_keeps_the_theory_invariant(tmp_path):
    grid = load_grid(write(tmp_path, GRID))
    diagonals = grid.diagonals(grid.configs())
    assert diagonals == {"sgd": SGD, "adam": ADAM}
    for opt, power in (("sgd", 1), ("adam", 2)):
        for product, line in diagonals[opt].items():
            assert [lr ** power * l2 for lr, l2 in line] == pytest.approx([product] * 3, rel=1e-11)
            assert len({l2 for _, l2 in line}) == 3  # l2 moves along the diagonal


def test_products_may_be_ranges_and_fixed_fields_serve(tmp_path):
    text = """
fixed: {optimizer: adam, lr: 0.01}
axes:
  l2: {iso: lr, adam: [{start: 1e-5, stop: 1e-4, per_decade: 2}]}
"""
    grid = load_grid(write(tmp_path, text))
    assert [t.l2 for t in grid.configs()] == [0.1, 0.316227766017, 1.0]
    assert list(grid.diagonals(grid.configs())["adam"]) == [1e-5, 3.16227766017e-05, 1e-4]


def test_exclude_matches_the_computed_l2(tmp_path):
    text = GRID + "exclude:\n  - {optimizer: sgd, l2: 0.04}\n  - {optimizer: adam, lr: 0.04}\n"
    got = points(load_grid(write(tmp_path, text)).configs())
    assert len(got) == 24 - 2 * 2 - 2 * 2
    assert not any(o == "sgd" and l2 == 0.04 for o, _, l2, _ in got)
    assert not any(o == "adam" and lr == 0.04 for o, lr, _, _ in got)
    assert ("sgd", 0.05, 0.02, 0) in got and ("sgd", 0.025, 0.08, 1) in got


def test_set_replaces_the_iso_axis_or_the_fields_it_reads(tmp_path):
    path = write(tmp_path, GRID)
    grid = load_grid(path, {"l2": 0.01})  # --set l2=0.01: a fixed l2, no diagonals
    assert {t.l2 for t in grid.configs()} == {0.01} and len(grid.configs()) == 12
    assert grid.diagonals(grid.configs()) == {}
    got = {(t.optimizer, t.lr, t.l2) for t in load_grid(path, {"lr": 0.05}).configs()}
    assert got == {("sgd", 0.05, 0.02), ("sgd", 0.05, 0.04),
                   ("adam", 0.05, 0.008), ("adam", 0.05, 0.016)}  # 2e-5 / 0.05^2 = 0.008
    adam = load_grid(path, {"optimizer": "adam"}).configs()
    assert points(adam) == [p for p in points(load_grid(path).configs()) if p[0] == "adam"]


HEAD = "axes:\n  optimizer: [sgd, adam]\n  lr: [0.1]\n"
BAD = {
    "bad iso value": (HEAD + "  l2: {iso: l2, sgd: [1e-3]}", ["'iso: l2' is not allowed"]),
    "iso on lr": ("axes:\n  optimizer: [sgd]\n  lr: {iso: lr, sgd: [0.1]}",
                  ["axis 'lr'", "'iso: lr' is not allowed", "only", "l2"]),
    "unknown optimizer key": (HEAD + "  l2: {iso: lr, sgd: [1e-3], adam: [1e-5], sdg: [1e-3]}",
                              ["invalid value 'sdg' for 'optimizer'"]),
    "no products for adam": (HEAD + "  l2: {iso: lr, sgd: [1e-3]}", ["optimizer='adam'"]),
    "no lr axis": ("axes:\n  optimizer: [sgd]\n  l2: {iso: lr, sgd: [1e-3]}",
                   ["'lr'", "listed before"]),
    "late lr axis": ("axes:\n  optimizer: [sgd]\n  l2: {iso: lr, sgd: [1e-3]}\n  lr: [0.1]",
                     ["'lr'", "listed before"]),
    "no optimizer axis": ("axes:\n  lr: [0.1]\n  l2: {iso: lr, sgd: [1e-3]}",
                          ["'optimizer'", "listed before"]),
    "zero product": (HEAD + "  l2: {iso: lr, sgd: [0], adam: [1e-5]}", ["optimizer=sgd", "0"]),
    "negative product": (HEAD + "  l2: {iso: lr, sgd: [-1e-3], adam: [1e-5]}",
                         ["optimizer=sgd", "-0.001"]),
    "inf product": (HEAD + "  l2: {iso: lr, sgd: [.inf], adam: [1e-5]}", ["optimizer=sgd", "inf"]),
    "text product": (HEAD + "  l2: {iso: lr, sgd: [1e-3], adam: [small]}",
                     ["optimizer=adam", "'small'"]),
    "bool product": (HEAD + "  l2: {iso: lr, sgd: [true], adam: [1e-5]}", ["optimizer=sgd", "True"]),
    "repeated product": (HEAD + "  l2: {iso: lr, sgd: [1e-3, 1e-3], adam: [1e-5]}",
                         ["optimizer=sgd", "repeated", "0.001"]),
    "empty": (HEAD + "  l2: {iso: lr}", ["empty"]),
    "l2 underflows": ("axes:\n  optimizer: [adam]\n  lr: [1e200]\n  l2: {iso: lr, adam: [2e-5]}",
                      ["adam product 2e-05", "lr=1e+200", "l2=0.0"]),
    "l2 overflows": ("axes:\n  optimizer: [adam]\n  lr: [1e-200]\n  l2: {iso: lr, adam: [2e-5]}",
                     ["adam product 2e-05", "lr=1e-200", "l2=inf"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_iso_axis_fails_in_one_line_naming_file_axis_value(tmp_path, case):
    axis = "axis 'lr'" if case == "iso on lr" else "axis 'l2'"
    message = grid_error(tmp_path, BAD[case][0])
    assert "\n" not in message
    for needle in [axis, *BAD[case][1]]:
        assert needle in message, (case, message)


def test_dry_run_prints_one_line_per_diagonal(tmp_path, capsys):
    assert main(["--grid", write(tmp_path, GRID), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "  sgd       lr*l2=0.001: (0.025, 0.04) (0.05, 0.02) (0.1, 0.01)\n" in out
    assert "  sgd       lr*l2=0.002: (0.025, 0.08) (0.05, 0.04) (0.1, 0.02)\n" in out
    assert "  adam      lr^2*l2=2e-05: (0.01, 0.2) (0.02, 0.05) (0.04, 0.0125)\n" in out
    assert "  adam      lr^2*l2=4e-05: (0.01, 0.4) (0.02, 0.1) (0.04, 0.025)\n" in out
    assert out.startswith("24 trials") and out.count("l2=") == 4
    assert main(["--grid", write(tmp_path, GRID), "--dry-run", "--set", "l2=0.01"]) == 0
    assert "iso-lines" not in capsys.readouterr().out

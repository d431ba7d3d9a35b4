"""The import arrows of the three packages: `sweeps` and `analysis` use `l2bn`, never each
other; `l2bn` imports neither of them, nor Ray."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

FORBIDDEN = {"sweeps": {"analysis"}, "analysis": {"sweeps"}, "l2bn": {"sweeps", "analysis", "ray"}}


def imported(path: Path) -> set[str]:
    """Top-level packages a source file imports, anywhere in it (`__main__` blocks and
    function bodies included); relative imports stay in their own package."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_imported_reads_every_form_of_import(tmp_path):
    src = ("import analysis.plan\nfrom sweeps import grid\nfrom . import rules\n"
           "def f():\n    from ray.tune import Tuner\nif __name__ == '__main__':\n    import l2bn\n")
    path = tmp_path / "probe.py"
    path.write_text(src)
    assert imported(path) == {"analysis", "sweeps", "ray", "l2bn"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_against_the_arrows(package):
    files = sorted((REPO / package).rglob("*.py"))
    assert files
    wrong = {str(f.relative_to(REPO)): sorted(imported(f) & FORBIDDEN[package]) for f in files}
    assert {f: w for f, w in wrong.items() if w} == {}

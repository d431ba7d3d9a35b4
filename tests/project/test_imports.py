"""The import arrows of the three packages: `sweeps` and `analysis` use `l2bn`, never each
other; `l2bn` imports neither of them, nor Ray."""
from __future__ import annotations

import ast
import subprocess
import sys
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


# The torch-free contract: the sweep driver, the analysis and a laptop without torch use these.
TORCH_FREE = ("l2bn.config", "l2bn.schema", "l2bn.store", "l2bn.theory", "l2bn.grid", "l2bn.budget")


@pytest.mark.parametrize("module", TORCH_FREE)
def test_the_contract_modules_never_import_torch(module):
    """Importing the module, directly or through anything it imports, loads no torch."""
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True)
    assert out.stdout.strip() == "[]"


# Calls that read a result file or list a results folder: l2bn/store.py's to make, nobody else's.
READ_CALLS = {"read_table", "ParquetFile", "read_parquet", "dataset", "read_metadata",
              "read_schema", "open_input_file", "open_input_stream", "get_file_info",
              "FileSelector", "from_uri"}


def store_bypasses(path: Path) -> list[str]:
    """`receiver.call` (or bare `call`) of READ_CALLS whose receiver is not the store module,
    with their line numbers (sweep.json too is read through pyarrow.fs's calls)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            value = func.value if isinstance(func, ast.Attribute) else None
            receiver = value.id if isinstance(value, ast.Name) else None
            if name in READ_CALLS and receiver != "store":
                found.append(f"{node.lineno}: {receiver + '.' if receiver else ''}{name}")
    return sorted(found, key=lambda hit: int(hit.split(":")[0]))


def test_store_bypasses_finds_each_kind(tmp_path):
    path = tmp_path / "reader.py"
    path.write_text("import pyarrow.parquet as pq\nfrom l2bn import store\n"
                    "t = pq.read_table('x')\nu = store.read_parquet(fs, 'x')\n"
                    "fs.get_file_info(p)\nds = dataset('x')\nfs.open_input_stream(base + '/sweep.json')\n")
    assert store_bypasses(path) == ["3: pq.read_table", "5: fs.get_file_info", "6: dataset",
                                    "7: fs.open_input_stream"]


@pytest.mark.parametrize("package", ["analysis", "sweeps"])
def test_results_are_read_through_the_store(package):
    """analysis/ and sweeps/ read Parquet files and sweep.json through l2bn/store.py only."""
    wrong = {str(f.relative_to(REPO)): hits for f in sorted((REPO / package).rglob("*.py"))
             if (hits := store_bypasses(f))}
    assert wrong == {}

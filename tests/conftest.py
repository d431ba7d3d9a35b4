"""Shared fixtures and helpers: where the real CIFAR-10 copy is (tests skip with a reason
without it), rows compared without their timings, grid files written from text."""
from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR_ENV = "L2BN_CIFAR_DIR"
VOLATILE = ("epoch_time_s", "time_s", "images_per_s")  # a history row's wall-clock columns


def comparable(row: dict) -> dict:
    """A history row without its timings, NaN made comparable (NaN != NaN)."""
    return {k: "nan" if isinstance(v, float) and math.isnan(v) else v
            for k, v in row.items() if k not in VOLATILE}


def close_rows(a: dict, b: dict, rel: float) -> bool:
    """Two comparable() rows: same keys, floats within `rel`, everything else equal."""
    return a.keys() == b.keys() and all(
        math.isclose(a[k], v, rel_tol=rel) if isinstance(v, float) and isinstance(a[k], float)
        else a[k] == v for k, v in b.items())


def grid_file(tmp_path: Path, text: str, name: str = "grid.yaml") -> str:
    """Path of a grid file holding `text`."""
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _cifar_dir() -> Path | None:
    """$L2BN_CIFAR_DIR, else the repo's .cache/cifar10 that .ci/run builds from ../shared/data."""
    for candidate in (os.environ.get(CIFAR_ENV), REPO / ".cache" / "cifar10"):
        if candidate and (Path(candidate) / "cifar-10-batches-py" / "test_batch").is_file():
            return Path(candidate)
    return None


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """Every test gets an empty $L2BN_CACHE (downloads, --fuse auto's cached probe), so no test
    reads what another test or a real sweep on this machine left in ~/.cache/l2bn."""
    monkeypatch.setenv("L2BN_CACHE", str(tmp_path_factory.mktemp("l2bn-cache")))


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """A directory holding cifar-10-batches-py, or skip."""
    found = _cifar_dir()
    if found is None:
        pytest.skip(f"real CIFAR-10 not found: set {CIFAR_ENV} to a directory holding "
                    "cifar-10-batches-py (.ci/run builds one from ../shared/data)")
    return found


def load_script(name: str):
    """A benchmarks/ script as a module (benchmarks/ is not a package; its scripts import each
    other by file name, as `python benchmarks/NAME.py` lets them)."""
    folder = str(REPO / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def grid_error(tmp_path: Path, text: str) -> str:
    """The GridError message of a grid file holding `text` (which must name the file)."""
    from l2bn.grid import GridError, load_grid

    path = tmp_path / "grid.yaml"
    path.write_text(text + "\n")
    with pytest.raises(GridError) as info:
        load_grid(str(path)).configs()
    assert str(path) in str(info.value)
    return str(info.value)

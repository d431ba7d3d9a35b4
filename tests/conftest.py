"""Shared fixtures: where the real CIFAR-10 copy is (tests skip with a reason without it)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR_ENV = "L2BN_CIFAR_DIR"


def _cifar_dir() -> Path | None:
    """$L2BN_CIFAR_DIR, else the repo's .cache/cifar10 that .ci/run builds from ../shared/data."""
    for candidate in (os.environ.get(CIFAR_ENV), REPO / ".cache" / "cifar10"):
        if candidate and (Path(candidate) / "cifar-10-batches-py" / "test_batch").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """A directory holding cifar-10-batches-py, or skip."""
    found = _cifar_dir()
    if found is None:
        pytest.skip(f"real CIFAR-10 not found: set {CIFAR_ENV} to a directory holding "
                    "cifar-10-batches-py (.ci/run builds one from ../shared/data)")
    return found

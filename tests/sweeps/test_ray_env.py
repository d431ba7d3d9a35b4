"""sweeps/ray_env.py: each environment switch and logger name it sets is still read by Ray,
and none appears anywhere else in the project's code."""
from __future__ import annotations

import importlib
import importlib.util
import logging
import re
from pathlib import Path

import pytest
from conftest import REPO

ray = pytest.importorskip("ray")
from sweeps import ray_env  # noqa: E402


@pytest.mark.parametrize("name", sorted(ray_env.SWITCHES))
def test_each_switch_is_read_by_the_ray_module_named_for_it(name):
    _, module, _ = ray_env.SWITCHES[name]
    source = Path(importlib.util.find_spec(module).origin).read_text()
    assert f'"{name}"' in source, f"{module} no longer reads {name}"


def test_worker_switches_and_their_values():
    assert ray_env.worker_env() == {"RAY_CHDIR_TO_TRIAL_DIR": "0"}
    assert set(ray_env.WORKER_SWITCHES) <= set(ray_env.SWITCHES)


@pytest.mark.parametrize("name, module", [
    (ray_env.ANALYSIS_LOGGER, ray_env.ANALYSIS_LOGGER),
    (ray_env.CONTROLLER_LOGGER, ray_env.CONTROLLER_LOGGER),
    (ray_env.TRAIN_LOGGER, "ray.train._internal.storage")])  # logs each checkpoint it creates
def test_each_logger_is_the_one_ray_logs_to(name, module):
    """The module logs through logging.getLogger(__name__), under the name we quiet."""
    logger = importlib.import_module(module).logger
    assert logger.name == module and (module == name or module.startswith(name + "."))
    assert logging.getLogger(module).parent is not None


def test_ray_names_appear_only_in_ray_env():
    """No RAY_*/TUNE_* switch or 'ray.*' logger name in the project's code but ray_env.py."""
    pattern = re.compile(r"""\b(RAY|TUNE)_[A-Z_]+\b|getLogger\(\s*["']ray""")
    found = {}
    for package in ("l2bn", "sweeps", "analysis", "benchmarks"):
        for path in (REPO / package).rglob("*.py"):
            if path.name != "ray_env.py" and (hits := pattern.findall(path.read_text())):
                found[str(path.relative_to(REPO))] = hits
    assert found == {}

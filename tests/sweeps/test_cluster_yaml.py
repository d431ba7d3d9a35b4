"""cluster.yaml against Ray's own cluster-config schema, offline (what `ray up` checks first)."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")
jsonschema = pytest.importorskip("jsonschema")  # a dependency of ray
autoscaler = pytest.importorskip("ray.autoscaler")

# The schema `ray up` validates against, as shipped in the installed wheel (no private Ray
# API: RAY_NOTES, "vendor the schema and call jsonschema directly").
SCHEMA = json.loads((Path(autoscaler.__file__).parent / "ray-schema.json").read_text())

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture()
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def validate(config: dict) -> dict:
    """Ray's JSON schema, then the launcher's cross-field checks that the schema cannot state
    (the head node type exists; min_workers <= max_workers per node type and overall)."""
    jsonschema.validate(config, SCHEMA)
    nodes = config["available_node_types"]
    if config["head_node_type"] not in nodes:
        raise ValueError(f"head_node_type {config['head_node_type']!r} is not in available_node_types")
    for name, node in nodes.items():
        if node.get("min_workers", 0) > node.get("max_workers", config["max_workers"]):
            raise ValueError(f"{name}: min_workers > max_workers")
    return config


def test_cluster_yaml_passes_rays_schema(config):
    prepared = validate(config)
    nodes = prepared["available_node_types"]
    assert prepared["provider"]["type"] == "aws"
    assert nodes[prepared["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = [n for n in nodes.values() if n["resources"].get("GPU", 0) >= 1]
    assert len(gpu) == 1
    assert 0 <= gpu[0]["min_workers"] <= gpu[0]["max_workers"] <= prepared["max_workers"]


def test_image_is_pinned_to_the_installed_ray(config):
    image = config["docker"]["image"]
    assert image == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert "ray-ml" not in yaml.safe_dump(config)  # a comment may mention it


def test_setup_installs_this_project_and_storage_is_a_variable(config):
    commands = " ".join(config["setup_commands"])
    mount = next(remote for remote, local in config["file_mounts"].items() if local == ".")
    assert f"pip install -q -e {mount}" in commands
    text = CLUSTER_YAML.read_text()
    assert '--storage "$L2BN_STORAGE"' in text
    values = yaml.safe_dump(config)  # comments stripped: nothing hard-codes a bucket
    assert not re.search(r"\b(s3|gs)://", values)


def test_no_credentials_in_the_file():
    text = CLUSTER_YAML.read_text().lower()
    for needle in ("aws_access_key_id", "aws_secret_access_key", "secret_key", "password",
                   "ssh_private_key", "token", "akia"):
        assert needle not in text, needle


@pytest.mark.parametrize("breakage, message", [
    (lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5),
     "0.5 is not of type 'integer'"),
    (lambda c: c.update(max_worker=4), "Additional properties are not allowed"),
    (lambda c: c["available_node_types"]["gpu_worker"].update(gpus=1),
     "Additional properties are not allowed"),
    (lambda c: c.update(head_node_type="cpu_head"), "head_node_type"),
    (lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=99), "max_workers"),
    (lambda c: c.pop("provider"), "provider"),
])
def test_a_broken_copy_fails_validation(config, breakage, message):
    broken = copy.deepcopy(config)
    breakage(broken)
    with pytest.raises(Exception, match=re.escape(message)):
        validate(broken)

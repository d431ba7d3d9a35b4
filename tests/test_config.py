"""TrialConfig validation: each bad input gets a clear error naming the field."""
import math

import pytest

from l2bn.config import ConfigError, TrialConfig


def test_defaults_are_valid_and_id_is_stable():
    a, b = TrialConfig(), TrialConfig()
    assert a.trial_id == b.trial_id and len(a.trial_id) == 12
    assert a.replace(lr=0.2).trial_id != a.trial_id
    # Where a trial runs does not change which grid point it is.
    assert a.replace(device="cpu", data_dir="/x").trial_id == a.trial_id


def test_ints_become_floats_and_row_round_trips():
    cfg = TrialConfig(lr=1, l2=0)
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0
    assert TrialConfig.from_dict(cfg.to_row()) == cfg
    assert cfg.weight_decay == 0.0 and TrialConfig(l2=0.25).weight_decay == 0.5


@pytest.mark.parametrize("changes, field, expected", [
    ({"optimizer": "rmsprop"}, "optimizer", "['sgd', 'momentum', 'adam', 'adamw']"),
    ({"norm": "group"}, "norm", "['none', 'batch', 'weight', 'layer', 'instance']"),
    ({"update": "clip"}, "update", "['l2', 'projection']"),
    ({"l2_scope": "some"}, "l2_scope", "['all', 'normalized']"),
    ({"data": "imagenet"}, "data", "['cifar10', 'synthetic']"),
    ({"lr": 0.0}, "lr", "> 0"),
    ({"lr": -1e-3}, "lr", "> 0"),
    ({"lr": math.inf}, "lr", "finite"),
    ({"lr": math.nan}, "lr", "finite"),
    ({"l2": -1e-4}, "l2", ">= 0"),
    ({"l2": math.nan}, "l2", "finite"),
    ({"epochs": 0}, "epochs", ">= 1"),
    ({"batch_size": 0}, "batch_size", ">= 1"),
    ({"n_train": 0}, "n_train", ">= 1"),
    ({"seed": -1}, "seed", ">= 0"),
    ({"device": "tpu"}, "device", "'auto', 'cpu', 'cuda'"),
    ({"lr": "0.1"}, "lr", "type float"),
    ({"epochs": 2.5}, "epochs", "type int"),
    ({"epochs": True}, "epochs", "type int"),
    ({"augment": 1}, "augment", "type bool"),
])
def test_bad_values_name_field_and_allowed(changes, field, expected):
    with pytest.raises(ConfigError) as err:
        TrialConfig(**changes)
    assert f"'{field}'" in str(err.value) and expected in str(err.value)


def test_projection_needs_a_normalization():
    with pytest.raises(ConfigError, match="'update'='projection' needs a normalization"):
        TrialConfig(norm="none", update="projection")
    with pytest.raises(ConfigError, match="'l2_scope'='normalized' needs a normalization"):
        TrialConfig(norm="none", l2_scope="normalized")


def test_unknown_keys_rejected_with_allowed_list():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['learning_rate'\]"):
        TrialConfig.from_dict({"learning_rate": 0.1})

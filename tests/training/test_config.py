"""TrialConfig validation: each bad input gets a clear error naming the field."""
import math

import pytest

from l2bn.config import DATA_SIZES, ConfigError, TrialConfig


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


@pytest.mark.parametrize("changes, message", [
    ({"n_train": 60000}, "'n_train' must be at most 50,000 (the cifar10 training set's size)"),
    ({"n_test": 10001}, "'n_test' must be at most 10,000 (the cifar10 test set's size)"),
    ({"data": "synthetic", "n_train": 513}, "'n_train' must be at most 512 (the synthetic training"),
    ({"data": "synthetic", "n_test": 257}, "'n_test' must be at most 256 (the synthetic test"),
])
def test_more_images_than_the_dataset_has_is_one_line_error(changes, message):
    """A row must never record more images than the trial trained on (it silently trained on
    all 50,000 and recorded 60,000 before)."""
    with pytest.raises(ConfigError) as err:
        TrialConfig(**changes)
    assert message in str(err.value) and "\n" not in str(err.value)
    # the bounds themselves are allowed, and are what the loader really holds
    full = {k: v for k, v in changes.items() if k == "data"}
    cfg = TrialConfig(**full, n_train=None, n_test=None)
    sizes = DATA_SIZES[cfg.data]
    assert TrialConfig(**full, n_train=sizes[0], n_test=sizes[1]).n_train == sizes[0]


def test_data_sizes_are_what_the_loader_makes():
    from l2bn.data import IMAGES_PER_FILE, TRAIN_FILES, synthetic_cifar

    train, test = synthetic_cifar()
    assert (len(train), len(test)) == DATA_SIZES["synthetic"]
    assert (len(TRAIN_FILES) * IMAGES_PER_FILE, IMAGES_PER_FILE) == DATA_SIZES["cifar10"]


def test_cli_rejects_too_many_images_in_one_line(capsys):
    from l2bn.train import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(["--n-train", "60000"])
    assert exc.value.code == 2
    assert "'n_train' must be at most 50,000" in capsys.readouterr().err

"""The fully scale-invariant network (scale_invariant=True): every trained weight is scale-invariant."""
import hashlib
import json

import pytest
import torch

from l2bn.config import ConfigError, TrialConfig
from l2bn.model import ConvNet, normalized_weights
from l2bn.train import Trial

NORMS = ["batch", "weight", "layer", "instance"]


@pytest.mark.parametrize("norm", NORMS)
def test_the_only_trained_parameters_are_the_normalized_conv_weights(norm):
    model = ConvNet(norm, width=4, scale_invariant=True)
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    assert trained == {id(w) for w in normalized_weights(model).values()}
    default = ConvNet(norm, width=4)  # the default net also trains gains/biases and fc
    assert sum(p.requires_grad for p in default.parameters()) > len(trained)


@pytest.mark.parametrize("norm", ["batch", "weight"])
def test_training_moves_the_convs_and_leaves_the_classifier_at_its_init(norm):
    cfg = TrialConfig(data="synthetic", device="cpu", width=4, batch_size=64, n_test=64, epochs=1,
                      norm=norm, lr=0.1, l2=1e-3, l2_scope="normalized", scale_invariant=True)
    trial = Trial(cfg)
    before = trial.stack.state_dict(0)
    (row,) = trial.run_epoch()
    after = trial.stack.state_dict(0)
    frozen = [n for n in before if n.startswith("fc.") or n.endswith("original0")]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    conv2 = "conv2.conv." + ("parametrizations.weight.original1" if norm == "weight" else "weight")
    assert not torch.equal(before[conv2], after[conv2])
    assert not any(".norm." in n and not n.startswith(("running", "num")) and "running" not in n
                   and "num_batches" not in n for n in after)  # no affine parameters
    assert row["fc_rel_update"] == 0 and row["conv2_rel_update"] > 0
    assert row["fc_angular_update"] == 0 and row["conv2_angular_update"] > 0
    assert row["scale_invariant"] is True


def test_it_needs_a_normalization_and_the_normalized_l2_scope():
    with pytest.raises(ConfigError, match="'scale_invariant'=True needs .*l2_scope='all'"):
        TrialConfig(scale_invariant=True, l2_scope="all")
    with pytest.raises(ConfigError, match="'scale_invariant'=True needs .*norm='none'"):
        TrialConfig(scale_invariant=True, norm="none", l2_scope="normalized")


def test_an_added_field_at_its_default_leaves_earlier_trial_ids_unchanged():
    cfg = TrialConfig(optimizer="adam", lr=1e-3, l2=1e-2, seed=2)
    row = {k: v for k, v in cfg.to_row().items()
           # the fields as before scale_invariant, precision and eval_last were added (the
           # execution fields device, data_dir and layout never enter the id)
           if k not in ("device", "data_dir", "layout", "scale_invariant", "precision", "eval_last")}
    before = hashlib.sha1(json.dumps(row, sort_keys=True, default=repr).encode()).hexdigest()[:12]
    assert cfg.trial_id == before
    assert cfg.replace(l2_scope="normalized", scale_invariant=True).trial_id != \
        cfg.replace(l2_scope="normalized").trial_id
    assert cfg.replace(precision="bf16").trial_id != cfg.trial_id
    assert cfg.replace(eval_last=3).trial_id != cfg.trial_id
    assert cfg.replace(layout="nchw").trial_id == cfg.trial_id

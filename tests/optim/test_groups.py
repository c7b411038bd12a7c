"""Parameter groups: which parameters fall where, weight-decay masks and per-group lr, checked
against updates computed by hand."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnresearch.config.defaults import base_config
from bnresearch.errors import UsageError
from bnresearch.models import build_model
from bnresearch.optim.groups import group_labels
from bnresearch.optim.optimizers import make_optimizer

LR = 0.1
PARAMS = {
    "conv": {"kernel": np.ones((2, 3)), "bias": np.full(3, 2.0)},
    "norm": {"scale": np.full(3, 3.0), "bias": np.full(3, 4.0)},
}
GRADS = jax.tree.map(lambda p: np.full_like(p, 0.5), PARAMS)


def optimizer_config(**fields):
    config = base_config().optimizer
    config.update(fields)
    return config


def one_update(config):
    optimizer = make_optimizer(config, lambda step: LR)
    params = jax.tree.map(jnp.asarray, PARAMS)
    updates, _ = optimizer.update(jax.tree.map(jnp.asarray, GRADS), optimizer.init(params), params)
    return jax.tree.map(np.asarray, updates)


def test_groups_of_a_batch_norm_cnn():
    model = build_model("cnn", num_classes=10, widths=(4, 8), convs_per_stage=1)
    variables = jax.eval_shape(
        functools.partial(model.init, train=True), jax.random.key(0), jnp.zeros((2, 8, 8, 1))
    )
    labels = group_labels(variables["params"])
    assert labels["stage1_conv1"] == {"kernel": "kernel"}
    assert labels["stage2_conv1_norm"] == {"scale": "scale", "bias": "bias"}
    assert labels["head"] == {"kernel": "kernel", "bias": "bias"}


@pytest.mark.parametrize(
    "target, decayed", [("all", {"kernel", "bias", "scale"}), ("kernels", {"kernel"})]
)
def test_weight_decay_reaches_only_its_target(target, decayed):
    updates = one_update(optimizer_config(name="sgd", weight_decay=0.01, weight_decay_on=target))
    for module, leaves in PARAMS.items():
        for leaf, value in leaves.items():
            group = "kernel" if value.ndim == 2 else ("scale" if leaf == "scale" else "bias")
            grad = GRADS[module][leaf] + (0.01 * value if group in decayed else 0.0)
            np.testing.assert_allclose(updates[module][leaf], -LR * grad, rtol=1e-6)


@pytest.mark.parametrize("name", ["momentum", "adam", "adamw"])
def test_lr_multiplier_scales_only_its_group(name):
    base = one_update(optimizer_config(name=name, weight_decay=0.01))
    scaled = one_update(
        optimizer_config(
            name=name, weight_decay=0.01, lr_multipliers={"kernel": 1.0, "scale": 0.01, "bias": 1.0}
        )
    )
    np.testing.assert_allclose(scaled["norm"]["scale"], 0.01 * base["norm"]["scale"], rtol=1e-6)
    for module, leaf in [("conv", "kernel"), ("conv", "bias"), ("norm", "bias")]:
        np.testing.assert_array_equal(scaled[module][leaf], base[module][leaf])


def test_bad_groups_and_targets_are_refused():
    with pytest.raises(UsageError, match="valid: all, kernels"):
        make_optimizer(optimizer_config(weight_decay_on="norms"), lambda step: LR)
    config = optimizer_config()
    config.lr_multipliers = {"gamma": 0.1}
    with pytest.raises(UsageError, match="group\\(s\\) gamma; valid: kernel, scale, bias"):
        make_optimizer(config, lambda step: LR)

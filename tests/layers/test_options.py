"""Layer options a population member passes at apply time (bnresearch/layers/options.py): the
layer then computes with the member's value, as if built with it; the values are recorded from
each member's own model, and only those that differ are passed."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnresearch.layers import get_normalization
from bnresearch.layers.normalization import NORMALIZATIONS
from bnresearch.layers.options import (
    OPTIONS,
    differing_options,
    recorded_options,
    with_options,
)
from bnresearch.layers.regularization import AlphaDropout, Dropout
from bnresearch.layers.variables import RNG_STREAM, STATE
from bnresearch.models import build_model
from tests.layers.normtest_utils import (
    CONV_SHAPE,
    SMALL_OPTIONS,
    init_with_random_affine,
    moments,
    random_input,
)

RNGS = {"dropout": jax.random.key(3)}


def recorded_in_init(model, image_shape):
    """The options `model`'s layers read in its training-mode init (train/state.py's)."""
    rngs = {"params": jax.random.key(0), RNG_STREAM: jax.random.key(1)}
    images = jax.ShapeDtypeStruct(image_shape, jnp.float32)
    return recorded_options(lambda batch: model.init(rngs, batch, train=True), images)


def numpy_batch_norm(x, variables, epsilon):
    mean, var = moments(x, (0, 1, 2))
    params = variables["params"]
    return (x - mean) / np.sqrt(var + epsilon) * params["scale"] + params["bias"]


def test_a_passed_epsilon_and_momentum_replace_the_built_ones():
    norm = get_normalization("batch", epsilon=1e-5, momentum=0.9)(name="norm")
    x = random_input(CONV_SHAPE)
    variables = init_with_random_affine(norm, x)
    passed = {"epsilon": jnp.float32(0.5), "momentum": jnp.float32(0.25)}
    y, updated = with_options(norm, passed).apply(variables, x, train=True, mutable=[STATE])
    np.testing.assert_allclose(y, numpy_batch_norm(x, variables, 0.5), rtol=1e-5, atol=1e-5)
    # The running mean took the EMA step with the passed momentum on the old value (0 at init).
    mean, _ = moments(x, (0, 1, 2))
    np.testing.assert_allclose(updated[STATE]["mean"], 0.75 * mean.ravel(), rtol=1e-5)
    # Built with those values, the layer computes the same.
    built = get_normalization("batch", epsilon=0.5, momentum=0.25)(name="norm")
    y_built, _ = built.apply(variables, x, train=True, mutable=[STATE])
    np.testing.assert_allclose(y, y_built, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layer", [Dropout, AlphaDropout])
def test_a_passed_drop_rate_draws_the_built_layers_mask(layer):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 32)), jnp.float32)
    passed = with_options(layer(rate=0.0), {"rate": jnp.float32(0.4)})
    y = passed.apply({}, x, train=True, rngs=RNGS)
    np.testing.assert_array_equal(y, layer(rate=0.4).apply({}, x, train=True, rngs=RNGS))
    # A member's rate of 0 goes through the drawing path, and its output is still exactly x.
    zero = with_options(layer(rate=0.4), {"rate": jnp.float32(0.0)})
    np.testing.assert_array_equal(zero.apply({}, x, train=True, rngs=RNGS), x)


def test_without_passed_options_the_layer_uses_its_own_and_records_them():
    model = build_model(
        "cnn",
        num_classes=10,
        norm="batch",
        norm_kwargs={"epsilon": 1e-3},
        dropout={"head": 0.2},
        widths=(8, 16),
    )
    recorded = recorded_in_init(model, (4, 8, 8, 1))
    epsilons = {key[:-1] for key, value in recorded.items() if key[-1] == "epsilon"}
    assert len(epsilons) == 4 and all(recorded[(*path, "epsilon")] == 1e-3 for path in epsilons)
    assert recorded[("head_dropout", "rate")] == 0.2
    assert recorded[("input_dropout", "rate")] == 0.0
    assert with_options(model, {}) is model


def test_only_the_options_members_differ_in_are_passed():
    members = [
        {("stage0", "norm", "epsilon"): 1e-5, ("head_dropout", "rate"): 0.0},
        {("stage0", "norm", "epsilon"): 1e-5, ("head_dropout", "rate"): 0.3},
    ]
    collection = differing_options(members)
    assert list(collection) == ["head_dropout"]
    np.testing.assert_array_equal(collection["head_dropout"]["rate"], np.float32([0.0, 0.3]))
    assert differing_options([members[0], members[0]]) == {}
    with pytest.raises(ValueError, match="not the same model"):
        differing_options([members[0], {("head_dropout", "rate"): 0.0}])
    assert OPTIONS == "member_options"


# Every normalization option a population member may set (members.MEMBER_FIELDS) must reach
# the layer through option(): one that did not would train every member with the first
# member's value, silently. Options some variants need to be in effect or to run here:
NEEDS = {
    **SMALL_OPTIONS,
    "weight": {"mean_only_batch_norm": True},  # its momentum is mean-only batch norm's
}
MEMBER_OPTIONS = [
    (name, field)
    for name, module in NORMALIZATIONS.items()
    for field in ("epsilon", "momentum")
    if field in {f.name for f in dataclasses.fields(module)}
]


@pytest.mark.parametrize("name, field", MEMBER_OPTIONS)
def test_every_normalization_option_a_member_may_set_reaches_its_layers(name, field):
    def recorded(value):
        model = build_model(
            "cnn",
            num_classes=10,
            norm=name,
            norm_kwargs={**NEEDS.get(name, {}), field: value},
            widths=(8, 16),
            batch_sizes=(4,),
            images_per_epoch=64,
        )
        return recorded_in_init(model, (4, 8, 8, 1))

    collection = differing_options([recorded(0.25), recorded(0.5)])
    values = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(collection)]
    assert len(values) == 4  # one per normalization layer of the CNN
    for value in values:
        np.testing.assert_array_equal(value, np.float32([0.25, 0.5]))

"""Instance norm and filter response normalization (with its TLU) against NumPy computations of
their formulas, their invariances, and FRN's place in the layer kit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnresearch.errors import UsageError
from bnresearch.layers import get_activation, get_normalization
from bnresearch.layers.kit import LayerKit
from bnresearch.layers.normalization.filter_response import ThresholdedLinearUnit
from bnresearch.layers.variables import STATE
from bnresearch.models import build_model
from tests.layers.normtest_utils import (
    CONV_SHAPE,
    DENSE_SHAPE,
    init_with_random_affine,
    moments,
    random_input,
)

# --- instance norm ---------------------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
def test_instance_norm_matches_numpy(train):
    norm = get_normalization("instance")()
    x = random_input(CONV_SHAPE)
    variables = init_with_random_affine(norm, x)
    assert STATE not in variables
    params = variables["params"]
    mean, var = moments(x, (1, 2))
    expected = (x - mean) / np.sqrt(var + 1e-5) * params["scale"] + params["bias"]
    np.testing.assert_allclose(
        norm.apply(variables, x, train=train), expected, rtol=1e-5, atol=1e-5
    )


def test_instance_norm_is_group_norm_with_one_channel_per_group():
    x = random_input(CONV_SHAPE)
    instance = get_normalization("instance")()
    group = get_normalization("group", group_size=1)()
    variables = init_with_random_affine(instance, x)
    np.testing.assert_allclose(
        instance.apply(variables, x, train=True),
        group.apply(variables, x, train=True),
        rtol=1e-6,
        atol=1e-6,
    )


def test_instance_norm_is_invariant_to_per_example_and_channel_affine_input():
    norm = get_normalization("instance")()
    x = random_input(CONV_SHAPE)
    rng = np.random.default_rng(5)
    gain = rng.uniform(0.5, 3.0, (CONV_SHAPE[0], 1, 1, CONV_SHAPE[-1]))
    shift = rng.normal(size=(CONV_SHAPE[0], 1, 1, CONV_SHAPE[-1])) * 5
    variables = init_with_random_affine(norm, x)
    np.testing.assert_allclose(
        norm.apply(variables, (x * gain + shift).astype(np.float32), train=True),
        norm.apply(variables, x, train=True),
        rtol=1e-4,
        atol=1e-4,
    )


def test_instance_norm_refuses_features_without_spatial_axes():
    norm = get_normalization("instance")()
    with pytest.raises(UsageError, match="instance norm: .* one value per channel"):
        norm.init(jax.random.key(0), random_input(DENSE_SHAPE), train=True)
    with pytest.raises(UsageError, match="instance norm"):
        build_model("mlp", num_classes=3, norm="instance", batch_sizes=[4], image_shape=(8, 8, 1))


# --- filter response normalization -----------------------------------------------------------


@pytest.mark.parametrize("shape", [CONV_SHAPE, DENSE_SHAPE])
@pytest.mark.parametrize("train", [True, False])
def test_frn_matches_numpy(shape, train):
    norm = get_normalization("frn")()
    x = random_input(shape)
    variables = init_with_random_affine(norm, x)
    assert STATE not in variables
    params = variables["params"]
    x64 = x.astype(np.float64)
    axes = tuple(range(1, len(shape) - 1))  # (H, W); none for dense features
    nu2 = (x64**2).mean(axes, keepdims=True) if axes else x64**2
    expected = x64 / np.sqrt(nu2 + 1e-6) * params["scale"] + params["bias"]
    np.testing.assert_allclose(
        norm.apply(variables, x, train=train), expected, rtol=1e-5, atol=1e-5
    )


def test_frn_is_invariant_to_per_example_and_channel_scale_but_not_shift():
    norm = get_normalization("frn")()
    x = random_input(CONV_SHAPE)
    gain = np.random.default_rng(6).uniform(0.5, 3.0, (CONV_SHAPE[0], 1, 1, CONV_SHAPE[-1]))
    variables = init_with_random_affine(norm, x)
    y = norm.apply(variables, x, train=True)
    np.testing.assert_allclose(
        norm.apply(variables, (x * gain).astype(np.float32), train=True), y, rtol=1e-4, atol=1e-4
    )
    # no mean subtraction: a shift changes the output (what the TLU's threshold makes up for)
    assert not np.allclose(norm.apply(variables, x + 5.0, train=True), y, atol=1e-2)


def test_tlu_is_max_with_a_learned_per_channel_threshold():
    x = random_input(CONV_SHAPE) - 3.0
    tlu = ThresholdedLinearUnit()
    variables = tlu.init(jax.random.key(0), x)
    np.testing.assert_array_equal(variables["params"]["tau"], np.zeros(CONV_SHAPE[-1]))
    tau = np.linspace(-1.0, 1.0, CONV_SHAPE[-1]).astype(np.float32)
    np.testing.assert_array_equal(tlu.apply({"params": {"tau": tau}}, x), np.maximum(x, tau))


def test_frn_puts_its_tlu_in_place_of_the_models_relu():
    norm = get_normalization("frn")
    kit = LayerKit(norm_factory=norm, activation_factory=get_activation("relu"))
    assert norm(parent=None).adapt_kit(kit).activation_factory is ThresholdedLinearUnit
    model = build_model("cnn", num_classes=3, norm="frn", widths=(4, 8), convs_per_stage=1)
    variables = jax.eval_shape(
        functools.partial(model.init, train=True), jax.random.key(0), jnp.zeros((2, 8, 8, 1))
    )
    # one TLU after each normalization, each with its own thresholds
    assert variables["params"]["stage1_conv1_act"]["tau"].shape == (4,)
    assert variables["params"]["stage2_conv1_act"]["tau"].shape == (8,)
    # tlu=false keeps the model's activation, which may then be any
    model = build_model(
        "cnn",
        num_classes=3,
        norm="frn",
        norm_kwargs={"tlu": False},
        activation="elu",
        widths=(4,),
        convs_per_stage=1,
    )
    variables = jax.eval_shape(
        functools.partial(model.init, train=True), jax.random.key(0), jnp.zeros((2, 8, 8, 1))
    )
    assert "stage1_conv1_act" not in variables["params"]
    with pytest.raises(
        UsageError,
        match="frn: its TLU replaces the model's relu .* ELU; use "
        "model.activation=relu or set model.norm_kwargs.tlu=false",
    ):
        build_model("cnn", num_classes=3, norm="frn", activation="elu")

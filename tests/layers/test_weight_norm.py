"""Weight normalization: the reparametrized layers against NumPy, Salimans & Kingma's
data-dependent init on a batch, mean-only batch norm in train and eval, and its place in the
layer kit (every weight layer of the model, the logits layer included)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnresearch.errors import UsageError
from bnresearch.layers import get_activation, get_normalization
from bnresearch.layers.kit import LayerKit
from bnresearch.layers.normalization.weight import (
    WeightNormConv,
    WeightNormDense,
    weight_norm_conv,
    weight_norm_dense,
)
from bnresearch.layers.variables import STATE
from bnresearch.models import build_model
from tests.layers.normtest_utils import CONV_SHAPE, DENSE_SHAPE, moments, random_input


def numpy_conv_same(x, w):
    """'SAME' stride-1 convolution (cross-correlation), NHWC x HWIO, in float64."""
    kh, kw = w.shape[:2]
    padded = np.pad(x.astype(np.float64), ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = np.zeros((*x.shape[:3], w.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            out += padded[:, i : i + x.shape[1], j : j + x.shape[2], :] @ w[i, j]
    return out


def test_dense_computes_g_v_over_norm_v_and_inits_from_the_data():
    x = random_input(DENSE_SHAPE)
    layer = WeightNormDense(5)
    params = layer.init(jax.random.key(0), x)["params"]
    v = np.asarray(params["kernel"], np.float64)
    # v ~ N(0, 0.05^2)
    assert v.shape == (8, 5) and 0.02 < v.std() < 0.09
    t = x @ (v / np.linalg.norm(v, axis=0))
    mean, var = moments(t, (0,))
    np.testing.assert_allclose(params["scale"], 1 / np.sqrt(var.ravel()), rtol=1e-4)
    np.testing.assert_allclose(
        params["bias"], -mean.ravel() / np.sqrt(var.ravel()), rtol=1e-4, atol=1e-5
    )
    # on the init batch every unit starts at mean 0, variance 1
    y = np.asarray(layer.apply({"params": params}, x), np.float64)
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.var(0), 1.0, rtol=1e-3)
    # any g, v, b: w = g v / ||v||
    rng = np.random.default_rng(2)
    other = {
        "kernel": rng.normal(size=(8, 5)).astype(np.float32),
        "scale": rng.uniform(0.5, 2, 5).astype(np.float32),
        "bias": rng.normal(size=5).astype(np.float32),
    }
    w = other["scale"] * other["kernel"] / np.linalg.norm(other["kernel"], axis=0)
    np.testing.assert_allclose(
        layer.apply({"params": other}, x), x @ w + other["bias"], rtol=1e-5, atol=1e-5
    )


def test_conv_computes_g_v_over_norm_v_and_inits_from_the_data():
    x = random_input(CONV_SHAPE)
    layer = WeightNormConv(3, (3, 3), use_bias=False)
    params = layer.init(jax.random.key(0), x)["params"]
    assert set(params) == {"kernel", "scale"}
    v = np.asarray(params["kernel"], np.float64)
    direction = v / np.sqrt((v**2).sum(axis=(0, 1, 2)))
    t = numpy_conv_same(x, direction)
    _, var = moments(t, (0, 1, 2))
    np.testing.assert_allclose(params["scale"], 1 / np.sqrt(var.ravel()), rtol=1e-4)
    y = layer.apply({"params": params}, x)
    np.testing.assert_allclose(
        y, numpy_conv_same(x, direction * params["scale"]), rtol=1e-4, atol=1e-4
    )


def test_without_data_dependent_init_g_is_one_and_b_zero():
    params = WeightNormDense(5, data_dependent_init=False).init(
        jax.random.key(0), random_input(DENSE_SHAPE)
    )["params"]
    np.testing.assert_array_equal(params["scale"], np.ones(5))
    np.testing.assert_array_equal(params["bias"], np.zeros(5))


def test_output_does_not_depend_on_the_norm_of_v():
    x = random_input(CONV_SHAPE)
    layer = WeightNormConv(3, (3, 3), strides=2, padding=1)
    params = layer.init(jax.random.key(0), x)["params"]
    scaled = {**params, "kernel": params["kernel"] * 7.0}
    np.testing.assert_allclose(
        layer.apply({"params": scaled}, x), layer.apply({"params": params}, x), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("shape", [CONV_SHAPE, DENSE_SHAPE])
def test_mean_only_batch_norm_matches_numpy_in_train_and_eval(shape):
    momentum = 0.8
    norm = get_normalization("weight", mean_only_batch_norm=True, momentum=momentum)()
    inputs = [random_input(shape, seed=0), random_input(shape, seed=1) - 2.0]
    variables = norm.init(jax.random.key(0), inputs[0], train=True)
    bias = np.random.default_rng(3).normal(size=shape[-1]).astype(np.float32)
    variables = {**variables, "params": {"bias": bias}}
    axes = tuple(range(len(shape) - 1))
    running = np.zeros(shape[-1])
    for x in inputs:
        y, updates = norm.apply(variables, x, train=True, mutable=[STATE])
        variables = {**variables, **updates}
        mean = x.astype(np.float64).mean(axes)
        np.testing.assert_allclose(y, x - mean + bias, rtol=1e-5, atol=1e-5)
        running = momentum * running + (1 - momentum) * mean
    np.testing.assert_allclose(variables[STATE]["mean"], running, rtol=1e-6)
    x = random_input(shape, seed=2)
    np.testing.assert_allclose(
        norm.apply(variables, x, train=False), x - running + bias, rtol=1e-5, atol=1e-5
    )


def test_norm_slot_without_mean_only_batch_norm_is_the_identity():
    norm = get_normalization("weight")()
    x = random_input(CONV_SHAPE)
    variables = norm.init(jax.random.key(0), x, train=True)
    assert not variables
    np.testing.assert_array_equal(norm.apply(variables, x, train=True), x)


def test_weight_norm_replaces_every_weight_layer_of_the_model():
    model = build_model("cnn", num_classes=3, norm="weight", widths=(4,), convs_per_stage=1)
    assert model.layers.conv_factory.func is weight_norm_conv
    assert model.layers.dense_factory.func is weight_norm_dense
    x = random_input((16, 8, 8, 1))
    variables = model.init(jax.random.key(0), x, train=True)
    # convs keep their bias (no mean-only BN after them); the logits layer is weight-normalized
    # too, so its data-dependent init starts the logits at mean 0, variance 1 per class
    assert set(variables["params"]["stage1_conv1"]) == {"kernel", "scale", "bias"}
    assert set(variables["params"]["head"]) == {"kernel", "scale", "bias"}
    logits = np.asarray(model.apply(variables, x, train=True), np.float64)
    np.testing.assert_allclose(logits.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(logits.var(0), 1.0, rtol=1e-3)
    # with mean-only batch norm the convs before it have no bias
    model = build_model(
        "cnn",
        num_classes=3,
        norm="weight",
        widths=(4,),
        convs_per_stage=1,
        norm_kwargs={"mean_only_batch_norm": True},
    )
    variables = jax.eval_shape(functools.partial(model.init, train=True), jax.random.key(0), x)
    assert set(variables["params"]["stage1_conv1"]) == {"kernel", "scale"}
    assert set(variables["params"]["stage1_conv1_norm"]) == {"bias"}


def test_weight_norm_refuses_to_replace_weight_layers_replaced_already():
    norm = get_normalization("weight")
    kit = LayerKit(norm_factory=norm, activation_factory=get_activation("relu"))
    quantized_like = dataclasses.replace(kit, conv_factory=lambda *args, **kwargs: None)
    with pytest.raises(UsageError, match="weight norm brings its own conv and dense layers"):
        norm(parent=None).adapt_kit(quantized_like)


def test_data_dependent_init_needs_more_than_one_value_per_unit():
    with pytest.raises(UsageError, match="data-dependent init of \\(1, 5\\) outputs"):
        WeightNormDense(5).init(jax.random.key(0), jnp.ones((1, 8)))

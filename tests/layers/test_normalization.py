"""Batch, layer and group norm against NumPy computations of their formulas (float64), plus
invariances and global-batch statistics under sharding; and for every normalization: bfloat16
compute, scale_init and registry errors. The other variants have test files of their own."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bnresearch.layers import NORMALIZATIONS, check_normalization_features, get_normalization
from bnresearch.layers.registry import has_field
from bnresearch.layers.variables import STATE
from tests.layers.normtest_utils import (
    CONV_SHAPE,
    DENSE_SHAPE,
    SMALL_OPTIONS,
    init_with_random_affine,
    random_input,
)

EPS = 1e-5


def numpy_normalize(x, axes, scale, bias, mean=None, var=None):
    x = np.asarray(x, np.float64)
    if mean is None:
        mean, var = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * scale + bias


def numpy_group_norm(x, num_groups, scale, bias):
    x = np.asarray(x, np.float64)
    grouped = x.reshape(*x.shape[:-1], num_groups, x.shape[-1] // num_groups)
    axes = (*range(1, grouped.ndim - 2), grouped.ndim - 1)
    mean, var = grouped.mean(axes, keepdims=True), grouped.var(axes, keepdims=True)
    return ((grouped - mean) / np.sqrt(var + EPS)).reshape(x.shape) * scale + bias


# --- batch norm -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [CONV_SHAPE, DENSE_SHAPE])
def test_batch_norm_train_eval_and_running_statistics(shape):
    momentum = 0.8
    bn = get_normalization("batch", momentum=momentum)()
    first, second = random_input(shape, seed=0), random_input(shape, seed=1) * 0.5 - 1.0
    variables = init_with_random_affine(bn, first)
    scale, bias = variables["params"]["scale"], variables["params"]["bias"]
    axes = tuple(range(len(shape) - 1))
    # init creates the running statistics (0, 1) without counting its forward pass as a step
    np.testing.assert_array_equal(variables[STATE]["mean"], np.zeros(shape[-1]))
    np.testing.assert_array_equal(variables[STATE]["var"], np.ones(shape[-1]))

    running_mean, running_var = np.zeros(shape[-1]), np.ones(shape[-1])
    for x in (first, second):
        y, updates = bn.apply(variables, x, train=True, mutable=[STATE])
        np.testing.assert_allclose(y, numpy_normalize(x, axes, scale, bias), rtol=1e-5, atol=1e-5)
        x64 = x.astype(np.float64)
        running_mean = momentum * running_mean + (1 - momentum) * x64.mean(axes)
        running_var = momentum * running_var + (1 - momentum) * x64.var(axes)  # biased
        np.testing.assert_allclose(updates[STATE]["mean"], running_mean, rtol=1e-6)
        np.testing.assert_allclose(updates[STATE]["var"], running_var, rtol=1e-6)
        variables = {**variables, **updates}

    x = random_input(shape, seed=2)
    y = bn.apply(variables, x, train=False)  # no mutable collection needed: eval changes nothing
    expected = numpy_normalize(x, axes, scale, bias, mean=running_mean, var=running_var)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_batch_norm_default_momentum_is_flax_convention():
    bn = get_normalization("batch")()
    x = random_input(DENSE_SHAPE)
    variables = bn.init(jax.random.key(0), x, train=True)
    _, updates = bn.apply(variables, x, train=True, mutable=[STATE])
    # 0.9 weighs the old value: PyTorch's momentum=0.1
    np.testing.assert_allclose(
        updates[STATE]["mean"], 0.1 * x.astype(np.float64).mean(0), rtol=1e-6
    )


def test_batch_norm_train_output_is_invariant_to_per_channel_affine_input():
    bn = get_normalization("batch")()
    x = random_input(CONV_SHAPE)
    rng = np.random.default_rng(3)
    gain = rng.uniform(0.5, 3.0, CONV_SHAPE[-1]).astype(np.float32)
    shift = rng.normal(size=CONV_SHAPE[-1]).astype(np.float32) * 5
    variables = init_with_random_affine(bn, x)
    y, _ = bn.apply(variables, x, train=True, mutable=[STATE])
    y_affine, _ = bn.apply(variables, x * gain + shift, train=True, mutable=[STATE])
    np.testing.assert_allclose(y_affine, y, rtol=1e-4, atol=1e-4)


def test_batch_norm_sharded_batch_uses_global_statistics():
    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py should simulate 8 CPU devices"
    mesh = Mesh(np.array(devices), ("data",))
    bn = get_normalization("batch")()
    x = random_input((16, 3, 3, 4))
    # Each device's two examples get a different offset, so per-device statistics would differ
    # from global ones by a lot.
    x = x + np.repeat(np.arange(8, dtype=np.float32) * 10, 2)[:, None, None, None]
    variables = init_with_random_affine(bn, x)
    step = jax.jit(lambda v, x: bn.apply(v, x, train=True, mutable=[STATE]))

    x_sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    assert len(x_sharded.sharding.device_set) == 8
    y_sharded, stats_sharded = step(jax.device_put(variables, NamedSharding(mesh, P())), x_sharded)
    y_single, stats_single = step(
        jax.device_put(variables, devices[0]), jax.device_put(x, devices[0])
    )

    np.testing.assert_allclose(y_sharded, y_single, rtol=1e-5, atol=1e-5)
    for key in ("mean", "var"):
        np.testing.assert_allclose(stats_sharded[STATE][key], stats_single[STATE][key], rtol=1e-5)
    axes = (0, 1, 2)
    params = variables["params"]
    np.testing.assert_allclose(
        y_sharded, numpy_normalize(x, axes, params["scale"], params["bias"]), rtol=1e-4, atol=1e-4
    )
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(stats_sharded[STATE]["mean"], 0.1 * x64.mean(axes), rtol=1e-5)
    np.testing.assert_allclose(stats_sharded[STATE]["var"], 0.9 + 0.1 * x64.var(axes), rtol=1e-5)


# --- layer norm -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [CONV_SHAPE, DENSE_SHAPE])
@pytest.mark.parametrize("train", [True, False])
def test_layer_norm_matches_numpy(shape, train):
    ln = get_normalization("layer")()
    x = random_input(shape)
    variables = init_with_random_affine(ln, x)
    assert STATE not in variables
    y = ln.apply(variables, x, train=train)
    expected = numpy_normalize(
        x, tuple(range(1, len(shape))), variables["params"]["scale"], variables["params"]["bias"]
    )
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_layer_norm_is_invariant_to_per_example_positive_scale():
    ln = get_normalization("layer")()
    x = random_input(CONV_SHAPE)
    per_example = np.random.default_rng(4).uniform(0.5, 5.0, (CONV_SHAPE[0], 1, 1, 1))
    variables = init_with_random_affine(ln, x)
    scaled = (x * per_example).astype(np.float32)
    np.testing.assert_allclose(
        ln.apply(variables, scaled, train=True),
        ln.apply(variables, x, train=True),
        rtol=1e-4,
        atol=1e-4,
    )


# --- group norm -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, num_groups", [({}, 32), ({"num_groups": 4}, 4), ({"group_size": 16}, 4)]
)
@pytest.mark.parametrize("spatial", [(3, 2), ()])
def test_group_norm_matches_numpy(options, num_groups, spatial):
    gn = get_normalization("group", **options)()
    x = random_input((4, *spatial, 64))
    variables = init_with_random_affine(gn, x)
    assert STATE not in variables
    for train in (True, False):
        expected = numpy_group_norm(
            x, num_groups, variables["params"]["scale"], variables["params"]["bias"]
        )
        np.testing.assert_allclose(
            gn.apply(variables, x, train=train), expected, rtol=1e-5, atol=1e-5
        )


def test_group_norm_with_one_group_is_layer_norm():
    x = random_input(CONV_SHAPE)
    gn = get_normalization("group", num_groups=1)()
    ln = get_normalization("layer")()
    variables = init_with_random_affine(gn, x)
    np.testing.assert_allclose(
        gn.apply(variables, x, train=True), ln.apply(variables, x, train=True), rtol=1e-6, atol=1e-6
    )


def test_group_norm_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="12 channels do not divide into num_groups=8"):
        check_normalization_features(get_normalization("group", num_groups=8), 12)
    gn = get_normalization("group", group_size=5)()
    with pytest.raises(ValueError, match="8 channels do not divide into groups of group_size=5"):
        gn.init(jax.random.key(0), random_input(DENSE_SHAPE), train=True)
    with pytest.raises(ValueError, match="not both"):
        get_normalization("group", num_groups=2, group_size=4)
    with pytest.raises(ValueError, match="num_groups must be a positive int"):
        get_normalization("group", num_groups=0)


# --- none -----------------------------------------------------------------------------------


def test_none_is_identity_without_variables():
    x = random_input(CONV_SHAPE)
    module = get_normalization("none")()
    variables = module.init(jax.random.key(0), x, train=True)
    assert not variables
    np.testing.assert_array_equal(module.apply(variables, x, train=True), x)


# --- every normalization --------------------------------------------------------------------


def all_float32(variables):
    """Every floating-point variable is float32 (step counters are int32)."""
    return all(
        leaf.dtype == jnp.float32
        for leaf in jax.tree.leaves(variables)
        if jnp.issubdtype(leaf.dtype, jnp.floating)
    )


@pytest.mark.parametrize("name", list(NORMALIZATIONS))
def test_bfloat16_compute_keeps_float32_variables(name):
    options = SMALL_OPTIONS.get(name, {})
    x = random_input(CONV_SHAPE)
    norm32 = get_normalization(name, **options)()
    norm16 = get_normalization(name, **options)(dtype=jnp.bfloat16)
    variables = norm16.init(jax.random.key(0), x.astype(jnp.bfloat16), train=True)
    assert all_float32(variables)
    for train in (True, False):
        y16, updates = norm16.apply(variables, x.astype(jnp.bfloat16), train=train, mutable=[STATE])
        assert y16.dtype == jnp.bfloat16
        assert all_float32(updates)
        y32, _ = norm32.apply(variables, x, train=train, mutable=[STATE])
        # bfloat16 rounding of the input (offset 3) and of the output: ~3 significant digits
        np.testing.assert_allclose(np.asarray(y16, np.float32), y32, rtol=0.05, atol=0.1)


def test_registry_names_valid_choices():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "valid normalizations: batch, ghost_batch, batch_renorm, batch_kalman, batch_layer, "
            "layer, group, instance, frn, weight, batchless, none"
        ),
    ):
        get_normalization("batchnorm")
    with pytest.raises(
        ValueError,
        match=re.escape(
            "'num_groups' for normalization 'batch'; valid options: heterogeneity_threshold, "
            "noise_shift, noise_gain, momentum, epsilon, scale_init, momentum_convention, "
            "eval_statistics"
        ),
    ):
        get_normalization("batch", num_groups=4)
    # dtype and the other build facts are the model's to set
    for fact in ("dtype", "images_per_epoch", "accumulation_steps", "activation"):
        with pytest.raises(
            ValueError,
            match="valid options: heterogeneity_threshold, noise_shift, noise_gain, num_groups",
        ):
            get_normalization("group", **{fact: None})
    with pytest.raises(ValueError, match=re.escape("valid options: heterogeneity_threshold")):
        get_normalization("none", epsilon=1e-3)
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\]"):
        get_normalization("batch", momentum=1.5)
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        get_normalization("layer", epsilon=0.0)


WITH_GAIN = [name for name in NORMALIZATIONS if has_field(NORMALIZATIONS[name], "scale_init")]


def test_every_normalization_with_a_gain_has_scale_init():
    assert set(NORMALIZATIONS) - set(WITH_GAIN) == {"weight", "none"}


@pytest.mark.parametrize("name", WITH_GAIN)
def test_scale_init_sets_the_initial_gain_and_zero_scale_overrides_it(name):
    from bnresearch.layers.kit import LayerKit

    x = random_input(CONV_SHAPE)
    norm = get_normalization(name, scale_init=0.1, **SMALL_OPTIONS.get(name, {}))
    variables = norm().init(jax.random.key(0), x, train=True)
    np.testing.assert_array_equal(
        variables["params"]["scale"], np.full(CONV_SHAPE[-1], 0.1, np.float32)
    )
    kit = LayerKit(norm_factory=norm, activation_factory=None)
    zeroed = kit.norm(name="n", zero_scale=True)
    assert zeroed.scale_init == 0.0
    assert kit.norm(name="n").scale_init == 0.1

"""Quantizers: forward values (levels, range) against NumPy, gradients against the STE each one
claims, determinism of the stochastic ones given the key and their expectation; the config's
errors; quantized layers against plain convs on the quantized operands, gradients reaching the
latent weights, full-precision first and last layers."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnresearch.errors import UsageError
from bnresearch.layers import quantization as q
from bnresearch.optim.constraints import LATENT_KERNEL

RNG = np.random.default_rng(0)
# Values on both sides of every threshold and none on one: the grid is offset from 0, +-1, 1/2
# and the rounding midpoints (a clip window's gradient at its very end is a convention, not part
# of any claim).
X = np.concatenate([np.linspace(-2.03, 2.07, 83), RNG.normal(size=40)]).astype(np.float32)
G = RNG.normal(size=X.shape).astype(np.float32)  # an arbitrary upstream gradient


def grad_of(quantizer, x, g=G):
    """d/dx of sum(g * quantizer(x)): the gradient the quantizer passes for upstream g."""
    return np.asarray(jax.grad(lambda x: jnp.sum(g * quantizer(x)))(jnp.asarray(x)))


def np_sign(x):
    return np.where(x >= 0, 1.0, -1.0)


def levels(values):
    return np.unique(np.asarray(values))


def assert_levels(values, grid, atol=1e-6):
    """Every value is one of the levels of `grid` (up to float rounding)."""
    distance = np.abs(np.asarray(values, np.float64).reshape(-1, 1) - np.asarray(grid)).min(-1)
    assert np.all(distance < atol)


# --- sign-based --------------------------------------------------------------------------------


def test_binaryconnect_sign_with_identity_ste():
    np.testing.assert_array_equal(q.sign_ste(X), np_sign(X))
    assert q.sign_ste(jnp.zeros(1))[0] == 1  # sign(0) = +1
    np.testing.assert_array_equal(grad_of(q.sign_ste, X), G)


def test_bnn_sign_with_clipped_ste():
    np.testing.assert_array_equal(q.sign_clipped_ste(X), np_sign(X))
    np.testing.assert_array_equal(grad_of(q.sign_clipped_ste, X), G * (np.abs(X) <= 1))
    # the window's ends are inside: g 1{|r| <= 1}
    np.testing.assert_array_equal(
        grad_of(q.sign_clipped_ste, np.array([-1.0, 1.0]), np.ones(2)), [1, 1]
    )


def test_stochastic_binarization_is_deterministic_given_the_key_and_unbiased():
    x = jnp.asarray(X)
    first = q.stochastic_sign_ste(x, jax.random.key(1))
    np.testing.assert_array_equal(first, q.stochastic_sign_ste(x, jax.random.key(1)))
    assert not np.array_equal(first, q.stochastic_sign_ste(x, jax.random.key(2)))
    assert set(levels(first)) == {-1.0, 1.0}
    # P(+1) = clip((x + 1) / 2, 0, 1), so E = clip(x, -1, 1). Over 4000 keys the standard error
    # of a mean of +-1 draws is at most 1/sqrt(4000) = 0.016; 0.08 is 5 of them.
    draws = jax.vmap(lambda key: q.stochastic_sign_ste(x, key))(
        jax.random.split(jax.random.key(3), 4000)
    )
    np.testing.assert_allclose(np.mean(draws, axis=0), np.clip(X, -1, 1), atol=0.08)
    # outside [-1, 1] the draw is certain
    np.testing.assert_array_equal(
        draws[:, np.abs(X) > 1],
        np.broadcast_to(np_sign(X[np.abs(X) > 1]), draws[:, np.abs(X) > 1].shape),
    )
    np.testing.assert_array_equal(
        grad_of(lambda x: q.stochastic_sign_ste(x, jax.random.key(1)), X), G
    )


def test_xnor_weights_are_a_per_filter_scaled_sign_with_the_papers_gradient():
    w = RNG.normal(size=(3, 3, 4, 5)).astype(np.float32) * 0.8
    g = RNG.normal(size=w.shape).astype(np.float32)
    alpha = np.abs(w).mean(axis=(0, 1, 2))  # one per output filter
    np.testing.assert_allclose(q.xnor_binarize(w), alpha * np_sign(w), rtol=1e-6)
    n = 3 * 3 * 4
    np.testing.assert_allclose(
        grad_of(q.xnor_binarize, w, g), g * (1 / n + alpha * (np.abs(w) <= 1)), rtol=1e-6
    )


# --- k-bit -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_qnn_linear_quantizer_levels_range_and_ste(bits):
    quantized = np.asarray(q.linear_quantize(jnp.asarray(X), bits, -1.0, 1.0))
    expected_levels = np.linspace(-1, 1, 2**bits)
    np.testing.assert_allclose(levels(quantized), expected_levels, atol=1e-6)
    # round to the nearest level (the grid X avoids the midpoints)
    nearest = expected_levels[
        np.argmin(np.abs(np.clip(X, -1, 1)[:, None] - expected_levels), axis=1)
    ]
    np.testing.assert_allclose(quantized, nearest, atol=1e-6)
    # (x - low) / Delta, then Delta * rounded: exact up to float rounding of Delta / Delta
    np.testing.assert_allclose(
        grad_of(lambda x: q.linear_quantize(x, bits, -1.0, 1.0), X), G * (np.abs(X) < 1), rtol=1e-6
    )


def test_qnn_stochastic_rounding_is_deterministic_given_the_key_and_unbiased():
    bits, x = 2, jnp.asarray(X)
    quantize = lambda key: q.linear_quantize(x, bits, -1.0, 1.0, key)
    np.testing.assert_array_equal(quantize(jax.random.key(1)), quantize(jax.random.key(1)))
    assert not np.array_equal(quantize(jax.random.key(1)), quantize(jax.random.key(2)))
    draws = jax.vmap(quantize)(jax.random.split(jax.random.key(3), 4000))
    assert_levels(draws, np.linspace(-1, 1, 4))
    assert len(levels(draws)) == 4
    # each draw is one of the two levels around x: spread at most Delta = 2/3, so the standard
    # error of the mean over 4000 draws is at most 1/3 / sqrt(4000) = 0.0053; 0.03 > 5 of them
    np.testing.assert_allclose(np.mean(draws, axis=0), np.clip(X, -1, 1), atol=0.03)
    np.testing.assert_allclose(
        grad_of(lambda x: q.linear_quantize(x, bits, -1.0, 1.0, jax.random.key(1)), X),
        G * (np.abs(X) < 1),
        rtol=1e-6,
    )


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_dorefa_activations(bits):
    quantized = np.asarray(q.dorefa_activations(jnp.asarray(X), bits))
    n = 2**bits - 1
    np.testing.assert_allclose(quantized, np.round(np.clip(X, 0, 1) * n) / n, atol=1e-6)
    assert len(levels(quantized)) == 2**bits and quantized.min() == 0 and quantized.max() == 1
    np.testing.assert_allclose(
        grad_of(lambda x: q.dorefa_activations(x, bits), X), G * ((X > 0) & (X < 1)), rtol=1e-6
    )


def test_dorefa_one_bit_weights():
    w = RNG.normal(size=(4, 6)).astype(np.float32) * 0.1
    g = RNG.normal(size=w.shape).astype(np.float32)
    e = np.abs(w).mean()  # one E for the whole layer
    np.testing.assert_allclose(q.dorefa_weights(w, 1), e * np_sign(w), rtol=1e-6)
    # E is a stop-gradient and sign's STE is the identity: E * (1/E) = 1
    np.testing.assert_allclose(grad_of(lambda w: q.dorefa_weights(w, 1), w, g), g, rtol=1e-5)


@pytest.mark.parametrize("bits", [2, 3])
def test_dorefa_k_bit_weights(bits):
    w = RNG.normal(size=(4, 6)).astype(np.float64)
    g = RNG.normal(size=w.shape)
    n = 2**bits - 1
    t = np.tanh(w)
    m = np.abs(t).max()
    expected = 2 * np.round((t / (2 * m) + 0.5) * n) / n - 1
    quantized = np.asarray(q.dorefa_weights(jnp.asarray(w, jnp.float32), bits))
    np.testing.assert_allclose(quantized, expected, atol=1e-6)
    assert_levels(quantized, 2 * np.arange(n + 1) / n - 1)
    assert quantized.min() >= -1 and quantized.max() <= 1
    # identity through the rounding: the gradient of sum(g tanh(w) / max|tanh w|), by hand
    jstar = np.unravel_index(np.argmax(np.abs(t)), t.shape)
    expected_grad = g * (1 - t**2) / m
    expected_grad[jstar] -= np.sign(t[jstar]) * (1 - t[jstar] ** 2) * np.sum(g * t) / m**2
    np.testing.assert_allclose(
        grad_of(lambda w: q.dorefa_weights(w, bits), w.astype(np.float32), g.astype(np.float32)),
        expected_grad,
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize("bits", [2, 4])
def test_dorefa_gradient_quantization(bits):
    x = jnp.asarray(RNG.normal(size=(3, 2, 2, 5)), jnp.float32)  # 3 examples
    g = jnp.asarray(RNG.normal(size=x.shape), jnp.float32)
    quantized_grad = lambda key: jax.grad(lambda x: jnp.sum(g * q.quantize_gradient(x, key, bits)))(
        x
    )
    np.testing.assert_array_equal(q.quantize_gradient(x, jax.random.key(0), bits), x)  # forward
    first = np.asarray(quantized_grad(jax.random.key(1)))
    np.testing.assert_array_equal(first, quantized_grad(jax.random.key(1)))
    assert not np.array_equal(first, quantized_grad(jax.random.key(2)))
    n = 2**bits - 1
    m = np.abs(np.asarray(g)).max(axis=(1, 2, 3), keepdims=True)  # per example
    # on the grid 2M (i/n - 1/2), i = 0..n, and within one grid step 2M/n of the true gradient
    grid_index = (first / (2 * m) + 0.5) * n
    np.testing.assert_allclose(grid_index, np.round(grid_index), atol=1e-4)
    assert grid_index.min() > -1e-4 and grid_index.max() < n + 1e-4
    assert np.all(np.abs(first - g) <= 2 * m / n + 1e-6)
    # the noise makes it unbiased: over 4000 keys the mean approaches g (each draw is one of two
    # grid points around g, so the spread is at most 2M/n; 5 standard errors of the mean)
    draws = jax.vmap(quantized_grad)(jax.random.split(jax.random.key(3), 4000))
    tolerance = 5 * (m / n) / np.sqrt(4000)
    assert np.all(np.abs(np.mean(draws, axis=0) - g) <= tolerance)


def test_an_all_zero_gradient_stays_zero():
    x = jnp.ones((2, 3))
    grad = jax.grad(lambda x: jnp.sum(0 * q.quantize_gradient(x, jax.random.key(0), 2)))(x)
    np.testing.assert_array_equal(grad, 0)


# --- the configuration -------------------------------------------------------------------------


def test_method_defaults():
    assert q.quantization_spec("bnn") == q.QuantizationSpec("bnn", 1, 1, 32)
    assert q.quantization_spec("dorefa", gradient_bits=4) == q.QuantizationSpec("dorefa", 1, 2, 4)
    assert q.quantization_spec("xnor", activation_bits=32).activation_bits == 32


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("ternary", {}, "valid: none, binaryconnect, bnn, xnor, qnn, dorefa"),
        ("qnn", {"weight_bits": 0}, "weight_bits must be an int from 1 to 32"),
        ("dorefa", {"activation_bits": 33}, "activation_bits must be an int from 1 to 32"),
        ("xnor", {"weight_bits": 2}, "weight_bits must be 1, got 2"),
        ("xnor", {"activation_bits": 2}, "activation_bits must be 1 (XNOR) or 32"),
        ("bnn", {"activation_bits": 32}, "activation_bits must be 1, got 32"),
        ("binaryconnect", {"activation_bits": 1}, "activation_bits must be 32"),
        ("qnn", {"gradient_bits": 8}, "only dorefa quantizes gradients"),
        ("bnn", {"stochastic": True}, "stochastic quantization exists for binaryconnect, qnn only"),
        ("xnor", {"activation_bits": 32, "input_scale": True}, "input_scale is XNOR-Net"),
        ("none", {"weight_bits": 1}, "weight_bits set without a quantization method"),
    ],
)
def test_impossible_combinations_are_refused(method, options, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        q.quantization_spec(method, **options)


# --- quantized layers --------------------------------------------------------------------------


def init_layer(layer, x, train=True):
    rngs = {"params": jax.random.key(0)}
    if train:
        rngs["dropout"] = jax.random.key(1)
    return layer.init(rngs, x)


def make_conv(spec, role="hidden", **kwargs):
    conv, _ = q.quantized_weight_layers(spec)
    return conv(4, (3, 3), padding=1, use_bias=False, role=role, name="conv", **kwargs)


def make_dense(spec, role="hidden"):
    _, dense = q.quantized_weight_layers(spec)
    return dense(5, use_bias=False, role=role, name="dense")


def images(shape=(2, 6, 6, 3)):
    return jnp.asarray(RNG.normal(size=shape), jnp.float32)


def test_bnn_conv_is_a_conv_of_the_signs_and_its_gradient_reaches_the_latent_weights():
    x = images()
    layer = make_conv(q.quantization_spec("bnn"))
    variables = init_layer(layer, x)
    latent = variables["params"][LATENT_KERNEL]
    assert list(variables["params"]) == [LATENT_KERNEL] and LATENT_KERNEL == q.LATENT_KERNEL
    reference = nn.Conv(4, (3, 3), padding=1, use_bias=False)
    np.testing.assert_array_equal(
        layer.apply(variables, x),
        reference.apply({"params": {"kernel": np_sign(latent)}}, np_sign(x)),
    )
    # The conv is linear in its kernel: d/dW of sum(g * conv(sign x, sign W)) is the reference
    # conv's kernel gradient, masked by the clipped STE of sign(W).
    g = images((2, 6, 6, 4))
    grad = jax.grad(lambda v: jnp.sum(g * layer.apply(v, x)))(variables)["params"][LATENT_KERNEL]
    kernel_grad = jax.grad(
        lambda k: jnp.sum(g * reference.apply({"params": {"kernel": k}}, np_sign(x)))
    )(jnp.asarray(np_sign(latent)))
    np.testing.assert_allclose(grad, kernel_grad * (np.abs(latent) <= 1), rtol=1e-5, atol=1e-5)
    assert np.count_nonzero(grad) > grad.size // 2


def test_bnn_dense_input_gradient_is_the_clipped_ste():
    x = jnp.asarray(RNG.normal(size=(3, 7)) * 1.5, jnp.float32)
    layer = make_dense(q.quantization_spec("bnn"))
    variables = init_layer(layer, x)
    w_b = np_sign(variables["params"][LATENT_KERNEL])
    g = RNG.normal(size=(3, 5)).astype(np.float32)
    np.testing.assert_array_equal(layer.apply(variables, x), np_sign(x) @ w_b)
    grad = jax.grad(lambda x: jnp.sum(g * layer.apply(variables, x)))(x)
    np.testing.assert_allclose(grad, (g @ w_b.T) * (np.abs(x) <= 1), rtol=1e-5, atol=1e-6)


def test_xnor_dense_with_input_scale():
    x = jnp.asarray(RNG.normal(size=(3, 7)), jnp.float32)
    layer = make_dense(q.quantization_spec("xnor", input_scale=True))
    variables = init_layer(layer, x)
    w = np.asarray(variables["params"][LATENT_KERNEL])
    alpha = np.abs(w).mean(axis=0)
    k = np.abs(np.asarray(x)).mean(axis=1, keepdims=True)
    np.testing.assert_allclose(
        layer.apply(variables, x), (np_sign(x) @ np_sign(w)) * alpha * k, rtol=1e-5, atol=1e-6
    )


def test_xnor_conv_input_scale_is_the_box_filtered_mean_magnitude():
    x = images((1, 5, 5, 2))
    layer = make_conv(q.quantization_spec("xnor", input_scale=True), strides=2)
    variables = init_layer(layer, x)
    w = np.asarray(variables["params"][LATENT_KERNEL])
    alpha = np.abs(w).mean(axis=(0, 1, 2))
    binary = nn.Conv(4, (3, 3), strides=2, padding=1, use_bias=False).apply(
        {"params": {"kernel": np_sign(w)}}, np_sign(x)
    )
    # K at output pixel (i, j): the mean of A = mean_c |x| over the 3x3 window at (2i, 2j),
    # zero padded, divided by 9 whatever the padding
    a = np.pad(np.abs(np.asarray(x)).mean(-1)[0], 1)
    k = np.array(
        [[a[2 * i : 2 * i + 3, 2 * j : 2 * j + 3].sum() / 9 for j in range(3)] for i in range(3)]
    )
    np.testing.assert_allclose(
        layer.apply(variables, x), binary * alpha * k[None, :, :, None], rtol=1e-5, atol=1e-6
    )


def test_dorefa_conv_quantizes_weights_and_inputs_and_names_its_kernel_plainly():
    x = images()
    spec = q.quantization_spec("dorefa", weight_bits=2, activation_bits=2)
    layer = make_conv(spec)
    variables = init_layer(layer, x)
    assert list(variables["params"]) == ["kernel"]  # DoReFa does not clip latent weights
    w = variables["params"]["kernel"]
    reference = nn.Conv(4, (3, 3), padding=1, use_bias=False).apply(
        {"params": {"kernel": q.dorefa_weights(w, 2)}}, q.dorefa_activations(x, 2)
    )
    np.testing.assert_allclose(layer.apply(variables, x), reference, rtol=1e-6, atol=1e-6)


def test_dorefa_gradient_bits_quantize_the_layers_gradient_deterministically_given_the_key():
    x = images()
    g = images((2, 6, 6, 4))
    grads = {}
    for bits in (2, 32):
        layer = make_conv(q.quantization_spec("dorefa", gradient_bits=bits))
        variables = init_layer(layer, x)
        grad = lambda key: jax.grad(
            lambda v: jnp.sum(g * layer.apply(v, x, rngs={"dropout": key}))
        )(variables)["params"]["kernel"]
        grads[bits] = grad(jax.random.key(5))
        np.testing.assert_array_equal(grads[bits], grad(jax.random.key(5)))
    assert not np.allclose(grads[2], grads[32])
    # quantizing the gradient changes it, but only by noise around it
    assert np.corrcoef(grads[2].ravel(), grads[32].ravel())[0, 1] > 0.5


def test_stochastic_layers_draw_at_train_and_are_deterministic_at_eval():
    x = images()
    layer = make_conv(q.quantization_spec("binaryconnect", stochastic=True))
    variables = init_layer(layer, x)
    latent = variables["params"][LATENT_KERNEL]
    train = lambda key: layer.apply(variables, x, rngs={"dropout": key})
    np.testing.assert_array_equal(train(jax.random.key(1)), train(jax.random.key(1)))
    assert not np.array_equal(train(jax.random.key(1)), train(jax.random.key(2)))
    # evaluation (no random stream): the deterministic sign
    expected = nn.Conv(4, (3, 3), padding=1, use_bias=False).apply(
        {"params": {"kernel": np_sign(latent)}}, x
    )
    np.testing.assert_allclose(layer.apply(variables, x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("role, quantized", [("first", False), ("hidden", True), ("last", False)])
def test_first_and_last_layers_stay_full_precision_by_default(role, quantized):
    x = images()
    layer = make_conv(q.quantization_spec("bnn"), role=role)
    assert isinstance(layer, q.QuantizedConv) == quantized
    assert (
        isinstance(make_dense(q.quantization_spec("bnn"), role=role), q.QuantizedDense) == quantized
    )
    assert list(init_layer(layer, x)["params"]) == [LATENT_KERNEL if quantized else "kernel"]


def test_a_quantized_first_layer_keeps_its_input_the_image():
    x = images()
    layer = make_conv(q.quantization_spec("bnn", quantize_first=True), role="first")
    variables = init_layer(layer, x)
    latent = variables["params"][LATENT_KERNEL]
    expected = nn.Conv(4, (3, 3), padding=1, use_bias=False).apply(
        {"params": {"kernel": np_sign(latent)}}, x
    )
    np.testing.assert_allclose(layer.apply(variables, x), expected, rtol=1e-6, atol=1e-6)
    assert isinstance(
        make_dense(q.quantization_spec("bnn", quantize_last=True), role="last"), q.QuantizedDense
    )


def test_latent_weights_start_inside_the_clip_window():
    # fan-in 1: He-normal draws reach beyond 1
    x = images((2, 3, 3, 1))
    _, dense = q.quantized_weight_layers(q.quantization_spec("bnn"))
    variables = init_layer(dense(4096, role="hidden", name="d"), x.reshape(18, 1))
    latent = variables["params"][LATENT_KERNEL]
    assert np.max(np.abs(latent)) == 1.0


def test_bfloat16_compute_keeps_float32_latent_weights():
    x = images()
    layer = make_conv(q.quantization_spec("dorefa", gradient_bits=4), dtype=jnp.bfloat16)
    variables = init_layer(layer, x)
    assert variables["params"]["kernel"].dtype == jnp.float32
    y = layer.apply(variables, x, rngs={"dropout": jax.random.key(0)})
    assert y.dtype == jnp.bfloat16
    grad = jax.grad(
        lambda v: jnp.sum(
            layer.apply(v, x, rngs={"dropout": jax.random.key(0)}).astype(jnp.float32)
        )
    )(variables)
    assert grad["params"]["kernel"].dtype == jnp.float32

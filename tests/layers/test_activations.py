"""Activations against their formulas in NumPy (float64), learnable parameters, and registry
errors."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnresearch.layers import ACTIVATIONS, get_activation

X = np.linspace(-4.0, 4.0, 33, dtype=np.float32).reshape(3, 11)
X64 = X.astype(np.float64)
ERF = np.vectorize(math.erf)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def softplus(x):
    return np.logaddexp(0, x)  # log(1 + e^x) without overflow


def mish(x):
    return x * np.tanh(softplus(x))


def mish_derivative(x):
    # d/dx x tanh(sp(x)) = tanh(sp(x)) + x sech^2(sp(x)) sigmoid(x), with sp' = sigmoid; the
    # sigmoid as e^-softplus(-x) so that it does not overflow either
    t = np.tanh(softplus(x))
    return t + x * (1 - t**2) * np.exp(-softplus(-x))


# Klambauer et al. 2017, eq. 14, written out independently of the module's constants.
SELU_LAMBDA, SELU_ALPHA = 1.0507009873554805, 1.6732632423543772

FORMULAS = [
    ("relu", {}, np.maximum(X64, 0)),
    ("leaky_relu", {}, np.where(X64 >= 0, X64, 0.01 * X64)),
    ("leaky_relu", {"negative_slope": 0.2}, np.where(X64 >= 0, X64, 0.2 * X64)),
    ("prelu", {}, np.maximum(X64, 0) + 0.25 * np.minimum(X64, 0)),
    ("prelu", {"slope_init": 0.1}, np.maximum(X64, 0) + 0.1 * np.minimum(X64, 0)),
    ("elu", {}, np.where(X64 > 0, X64, np.expm1(X64))),
    ("elu", {"alpha": 0.5}, np.where(X64 > 0, X64, 0.5 * np.expm1(X64))),
    ("selu", {}, SELU_LAMBDA * np.where(X64 > 0, X64, SELU_ALPHA * np.expm1(X64))),
    ("gelu_exact", {}, X64 * 0.5 * (1 + ERF(X64 / np.sqrt(2)))),
    ("gelu_tanh", {}, 0.5 * X64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (X64 + 0.044715 * X64**3)))),
    ("swish", {}, X64 * sigmoid(X64)),
    ("swish", {"beta": 2.0}, X64 * sigmoid(2 * X64)),
    ("swish", {"beta": 0.5, "learnable_beta": True}, X64 * sigmoid(0.5 * X64)),
    ("silu", {}, X64 * sigmoid(X64)),
    ("tanh", {}, np.tanh(X64)),
    ("sigmoid", {}, sigmoid(X64)),
    ("hard_tanh", {}, np.clip(X64, -1, 1)),
    ("mish", {}, mish(X64)),
]


def test_every_activation_has_a_formula_test():
    assert {name for name, _, _ in FORMULAS} == set(ACTIVATIONS)


@pytest.mark.parametrize(
    "name, options, expected", FORMULAS, ids=[f"{n}-{o}" for n, o, _ in FORMULAS]
)
def test_activation_matches_numpy(name, options, expected):
    activation = get_activation(name, **options)()
    variables = activation.init(jax.random.key(0), X)
    np.testing.assert_allclose(activation.apply(variables, X), expected, rtol=1e-6, atol=1e-6)


def test_the_two_gelus_differ():
    # the choice matters: the tanh form is off by up to about 5e-4 from the exact one here
    exact = get_activation("gelu_exact")().apply({}, X)
    approximate = get_activation("gelu_tanh")().apply({}, X)
    assert 1e-4 < np.max(np.abs(exact - approximate)) < 1e-3


def test_prelu_has_one_slope_per_channel_that_learns():
    prelu = get_activation("prelu")()
    x = np.array([[-1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]], np.float32)
    variables = prelu.init(jax.random.key(0), x)
    assert jax.tree.map(np.shape, variables) == {"params": {"slope": (3,)}}
    slopes = np.array([0.5, 0.0, 2.0], np.float32)
    np.testing.assert_allclose(
        prelu.apply({"params": {"slope": slopes}}, x), np.maximum(x, 0) + slopes * np.minimum(x, 0)
    )
    # d/da of sum(prelu(x)) is the sum of the channel's negative inputs
    grad = jax.grad(lambda v: prelu.apply(v, x).sum())(variables)["params"]["slope"]
    np.testing.assert_allclose(grad, np.minimum(x, 0).sum(0))


def test_learnable_swish_beta_is_a_scalar_parameter_with_its_gradient():
    swish = get_activation("swish", beta=1.5, learnable_beta=True)()
    variables = swish.init(jax.random.key(0), X)
    assert jax.tree.map(np.shape, variables) == {"params": {"beta": ()}}
    grad = jax.grad(lambda v: swish.apply(v, X).sum())(variables)["params"]["beta"]
    s = sigmoid(1.5 * X64)
    np.testing.assert_allclose(grad, np.sum(X64**2 * s * (1 - s)), rtol=1e-5)
    assert get_activation("swish")().init(jax.random.key(0), X) == {}  # fixed beta: no params


# where exp(x) overflows float32 (x > 88.7) a naive log(1 + exp(x)) has an inf/inf = NaN gradient
LARGE = np.array([-1000.0, -100.0, -30.0, -20.0, 20.0, 30.0, 89.0, 100.0, 1000.0], np.float32)


def test_mish_is_finite_and_exact_for_large_inputs():
    out = get_activation("mish")().apply({}, LARGE)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, mish(LARGE.astype(np.float64)), rtol=1e-6, atol=1e-6)


def test_mish_derivative():
    # the closed form against Misra 2019's own expression e^x omega / delta^2 (section 3.1) and
    # a float64 central difference, at moderate x where neither overflows
    x = np.linspace(-5.0, 5.0, 21)
    e = np.exp(x)
    omega = 4 * (x + 1) + 4 * e**2 + e**3 + e * (4 * x + 6)
    delta = 2 * e + e**2 + 2
    np.testing.assert_allclose(mish_derivative(x), e * omega / delta**2, rtol=1e-12, atol=1e-12)
    h = 1e-5
    np.testing.assert_allclose(
        mish_derivative(x), (mish(x + h) - mish(x - h)) / (2 * h), rtol=1e-8, atol=1e-8
    )
    # the module's gradient against the closed form, large |x| included: finite, 1 far right,
    # 0 far left, and the minimum of mish near x = -1.19 (derivative 0 there)
    activation = get_activation("mish")()
    points = np.concatenate([X.ravel(), LARGE, np.float32([-1.19, 0.0])])
    grad = jax.vmap(jax.grad(lambda v: activation.apply({}, v)))(points)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(
        grad, mish_derivative(points.astype(np.float64)), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(mish_derivative(np.array([0.0, -1.19])), [0.6, 0.0], atol=2e-3)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_keeps_input_dtype(name):
    activation = get_activation(name)()
    variables = activation.init(jax.random.key(0), X)
    assert activation.apply(variables, jnp.asarray(X, jnp.bfloat16)).dtype == jnp.bfloat16


def test_registry_names_valid_choices():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "valid activations: relu, leaky_relu, prelu, elu, selu, gelu_exact, gelu_tanh, "
            "swish, silu, tanh, sigmoid, hard_tanh, mish"
        ),
    ):
        get_activation("gelu")
    with pytest.raises(
        ValueError, match=re.escape("option(s) 'beta' for activation 'elu'; valid options: alpha")
    ):
        get_activation("elu", beta=1.0)
    with pytest.raises(ValueError, match=re.escape("valid options: (none)")):
        get_activation("silu", beta=2.0)

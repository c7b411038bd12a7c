"""Internal covariate shift against a two-layer linear network, by hand in NumPy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bnresearch.errors import UsageError
from bnresearch.measure.covariate_shift import (
    check_covariate_shift_config,
    forward_order,
    shift,
    summary,
)

LR = 0.3


def two_layer_problem(seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(16, 4)), rng.normal(size=(16, 2))
    w1, w2 = rng.normal(size=(4, 3)), rng.normal(size=(3, 2))
    return x, y, w1, w2


def by_hand(x, y, w1, w2):
    """L = 1/(2N) ||x W1 W2 - y||^2: G1 = x^T R W2^T / N, G2 = (x W1)^T R / N, R the residual."""
    n = len(x)
    residual = x @ w1 @ w2 - y
    return x.T @ residual @ w2.T / n, (x @ w1).T @ residual / n


def test_the_shift_of_a_two_layer_linear_network():
    x, y, w1, w2 = two_layer_problem()
    # The layers are named against the alphabet: the order given, not the keys', must count.
    layers = ("second", "first")  # "second" is the input layer here, w1

    def gradient_fn(params):
        def loss(params):
            out = x @ params["second"]["kernel"] @ params["first"]["kernel"]
            return 0.5 * jnp.mean(jnp.sum(jnp.square(out - y), axis=1))

        return jax.grad(loss)(params)

    params = {"second": {"kernel": jnp.asarray(w1)}, "first": {"kernel": jnp.asarray(w2)}}
    g1, g2 = by_hand(x, y, w1, w2)
    updated = {
        "second": {"kernel": jnp.asarray(w1 - LR * g1)},
        "first": {"kernel": jnp.asarray(w2 - LR * g2)},
    }
    distances, cosines = shift(gradient_fn, params, updated, layers)
    # G'_2: the second layer's gradient after the first took its step; the first has none before.
    _, g2_shifted = by_hand(x, y, w1 - LR * g1, w2)
    expected_cosine = np.sum(g2 * g2_shifted) / np.linalg.norm(g2) / np.linalg.norm(g2_shifted)
    np.testing.assert_allclose(
        distances, [0.0, np.linalg.norm(g2 - g2_shifted)], rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(cosines, [1.0, expected_cosine], rtol=1e-5)
    assert np.linalg.norm(g2 - g2_shifted) > 0.1  # a shift worth measuring
    scalars = summary(layers, distances, cosines)
    assert scalars["ics/mean_l2"] == pytest.approx(float(distances[1]))
    assert scalars["ics/mean_cosine"] == pytest.approx(float(cosines[1]))
    assert set(scalars) == {
        "ics/00_second/l2",
        "ics/00_second/cosine",
        "ics/01_first/l2",
        "ics/01_first/cosine",
        "ics/mean_l2",
        "ics/mean_cosine",
    }


class Backwards(nn.Module):
    """Submodules named so that the alphabet reverses the forward order."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(3, name="zeta")(x)
        x = nn.relu(x)
        x = nn.Dense(3, name="mu")(x)
        return nn.Dense(2, name="alpha")(x)


def test_the_forward_order_is_the_order_of_the_calls():
    model = Backwards()
    x = jnp.ones((4, 5))
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    assert forward_order(model.apply, params, x) == ("zeta", "mu", "alpha")


def test_layers_other_than_the_parameters_are_refused():
    params = {"a": jnp.ones(2), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match="are not the parameters'"):
        shift(lambda p: p, params, params, ("a",))


def test_accumulation_is_refused_in_one_line():
    config = ml_collections.ConfigDict({"enabled": True, "every": "5 steps"})
    with pytest.raises(UsageError, match=r"needs optimizer.accumulation_steps=1"):
        check_covariate_shift_config(config, accumulation_steps=2)
    check_covariate_shift_config(config, accumulation_steps=1)

"""Dropout, alpha-dropout and stochastic depth: identity (or the fixed rescaling) at evaluation,
the right expectation at train, determinism given the key; the kit's placements and init choice.

The statistical tests use a fixed seed, so they are deterministic; each tolerance is 5 standard
errors of the estimate, derived in the test, so a correct implementation fails with probability
below 1e-6 for a random seed, while an off-by-a-factor mistake (e.g. not rescaling kept units)
is off by far more."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnresearch.errors import UsageError
from bnresearch.layers import get_activation, get_normalization
from bnresearch.layers.kit import LECUN_NORMAL, LayerKit, kernel_initializer
from bnresearch.layers.regularization import (
    SELU_SATURATION,
    AlphaDropout,
    Dropout,
    StochasticDepth,
    linear_survival,
)

N = 200_000


def apply(module, x, train, key=0):
    return module.apply({}, x, train=train, rngs={"dropout": jax.random.key(key)})


@pytest.mark.parametrize("module", [Dropout(rate=0.3), AlphaDropout(rate=0.3)])
def test_identity_at_evaluation(module):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)), jnp.float32)
    np.testing.assert_array_equal(module.apply({}, x, train=False), x)  # needs no random stream


def test_dropout_drops_at_the_rate_and_keeps_the_expectation():
    rate = 0.3
    x = jnp.full((N,), 2.0)
    y = np.asarray(apply(Dropout(rate=rate), x, train=True))
    # kept units are x / (1 - rate), dropped ones 0
    assert set(np.unique(y)) == {0.0, np.float32(2.0 / 0.7)}
    # fraction dropped: a binomial proportion, standard error sqrt(r (1 - r) / N) = 0.001
    assert abs(np.mean(y == 0) - rate) < 5 * np.sqrt(rate * (1 - rate) / N)
    # mean: 2 / 0.7 times a Bernoulli(0.7) mean, standard error 2 sqrt(r / ((1 - r) N))
    assert abs(y.mean() - 2.0) < 5 * 2 * np.sqrt(rate / ((1 - rate) * N))
    np.testing.assert_array_equal(y, apply(Dropout(rate=rate), x, train=True))  # same key
    assert not np.array_equal(y, apply(Dropout(rate=rate), x, train=True, key=1))


def test_alpha_dropout_keeps_zero_mean_and_unit_variance():
    rate = 0.2
    x = jnp.asarray(np.random.default_rng(0).normal(size=N), jnp.float32)
    y = np.asarray(apply(AlphaDropout(rate=rate), x, train=True), np.float64)
    # affine map of the dropped value and of the kept inputs, with Klambauer et al.'s a and b
    q = 1 - rate
    a = (q + SELU_SATURATION**2 * q * (1 - q)) ** -0.5
    b = -a * (1 - q) * SELU_SATURATION
    dropped = np.isclose(y, a * SELU_SATURATION + b, atol=1e-6)
    assert abs(dropped.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / N)
    np.testing.assert_allclose(y[~dropped], a * np.asarray(x)[~dropped] + b, rtol=1e-5, atol=1e-6)
    # the fixed point: mean 0 and variance 1 (y has variance 1, so the standard error of its
    # mean is 1/sqrt(N); that of its variance about sqrt(2/N) for near-Gaussian tails, sqrt(3/N)
    # here to cover the two-point mixture)
    assert abs(y.mean()) < 5 / np.sqrt(N)
    assert abs(y.var() - 1) < 5 * np.sqrt(3 / N)


def test_linear_survival_rule():
    assert [linear_survival(block, 4, 0.5) for block in (1, 2, 3, 4)] == [0.875, 0.75, 0.625, 0.5]
    assert linear_survival(3, 3, 0.0) == 1.0


def test_stochastic_depth_one_draw_per_batch_right_expectation_scaled_at_eval():
    survival, draws = 0.75, 20_000
    branch = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)
    module = StochasticDepth(survival=survival)
    outputs = jax.vmap(lambda key: module.apply({}, branch, train=True, rngs={"dropout": key}))(
        jax.random.split(jax.random.key(0), draws)
    )
    kept = np.all(outputs == branch, axis=(1, 2))
    dropped = np.all(outputs == 0, axis=(1, 2))
    assert np.all(kept | dropped)  # the whole batch's branch, never part of it
    # survival frequency: standard error sqrt(p (1 - p) / draws) = 0.003
    assert abs(kept.mean() - survival) < 5 * np.sqrt(survival * (1 - survival) / draws)
    np.testing.assert_allclose(module.apply({}, branch, train=False), survival * branch, rtol=1e-6)


class ResidualBlock(nn.Module):
    """shortcut + stochastic depth of the branch tanh(x W + b), as the residual models add it."""

    survival: float

    @nn.compact
    def __call__(self, x, train):
        branch = jnp.tanh(nn.Dense(x.shape[-1], name="dense")(x))
        return x + StochasticDepth(survival=self.survival, name="drop")(branch, train=train)


@pytest.mark.parametrize("survival", [0.3, 0.75, 1.0])
def test_stochastic_depth_block_is_shortcut_plus_survival_times_branch(survival):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 6)), jnp.float32)
    block = ResidualBlock(survival=survival)
    variables = block.init(jax.random.key(0), x, train=False)
    dense = variables["params"]["dense"]
    shortcut = np.asarray(x, np.float64)
    branch = np.tanh(
        shortcut @ np.asarray(dense["kernel"], np.float64) + np.asarray(dense["bias"], np.float64)
    )
    assert np.abs(branch).max() > 0.5  # a branch that matters: scaling it is visible
    # evaluation: deterministic, needs no random stream, shortcut + p * branch
    np.testing.assert_allclose(
        block.apply(variables, x, train=False), shortcut + survival * branch, rtol=1e-6, atol=1e-6
    )
    # train: per draw the whole block is shortcut + branch or the shortcut alone, and the mean
    # over draws is the evaluation output; per element the mean of Bernoulli(p) times branch
    # has standard error |branch| sqrt(p (1 - p) / draws)
    draws = 10_000
    outputs = np.asarray(
        jax.vmap(lambda key: block.apply(variables, x, train=True, rngs={"dropout": key}))(
            jax.random.split(jax.random.key(1), draws)
        ),
        np.float64,
    )
    kept = np.all(np.isclose(outputs, shortcut + branch, rtol=1e-6, atol=1e-6), axis=(1, 2))
    dropped = np.all(outputs == np.asarray(x), axis=(1, 2))
    assert np.all(kept != dropped)  # exactly one of the two, for the whole batch
    standard_error = np.abs(branch) * np.sqrt(survival * (1 - survival) / draws)
    np.testing.assert_array_less(
        np.abs(outputs.mean(0) - (shortcut + survival * branch)), 5 * standard_error + 1e-6
    )


def test_kit_placements_and_rates():
    kit = LayerKit(
        norm_factory=get_normalization("none"),
        activation_factory=get_activation("relu"),
        input_dropout=0.2,
        hidden_dropout=0.1,
        head_dropout=0.5,
        stochastic_depth_rate=0.5,
    )
    assert kit.dropout(name="d", placement="input").rate == 0.2
    assert kit.dropout(name="d", placement="hidden").rate == 0.1
    assert kit.dropout(name="d", placement="head").rate == 0.5
    assert isinstance(kit.dropout(name="d", placement="head"), Dropout)
    assert kit.stochastic_depth(name="s", block=2, num_blocks=4).survival == 0.75
    alpha_kit = LayerKit(
        norm_factory=get_normalization("none"),
        activation_factory=get_activation("selu"),
        head_dropout=0.05,
        alpha_dropout=True,
    )
    assert isinstance(alpha_kit.dropout(name="d", placement="head"), AlphaDropout)


def test_kernel_initializer_choice():
    assert kernel_initializer(None, "last", "dense") is LECUN_NORMAL
    assert kernel_initializer("lecun_normal", "hidden", "conv") is LECUN_NORMAL
    # He-normal by default: variance 2 / fan_in
    w = kernel_initializer(None, "hidden", "conv")(jax.random.key(0), (3, 3, 64, 256))
    assert abs(np.var(w) * 9 * 64 / 2 - 1) < 0.02
    w = kernel_initializer("lecun_normal", "hidden", "dense")(jax.random.key(0), (512, 512))
    assert abs(np.var(w) * 512 - 1) < 0.02


def test_bad_rates_are_refused():
    from bnresearch.layers.regularization import check_drop_rate

    with pytest.raises(UsageError, match=r"model.dropout.head must lie in \[0, 1\), got 1.0"):
        check_drop_rate("model.dropout.head", 1.0)

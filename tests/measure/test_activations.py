"""Activation statistics and noisy batch norm against NumPy, and the train forward they leave
alone."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bnresearch.errors import UsageError
from bnresearch.layers.normalization.base import covariate_noise
from bnresearch.layers.normalization.batch import BatchNorm
from bnresearch.layers.variables import ACTIVATIONS, RNG_STREAM, TRAIN_MUTABLE
from bnresearch.measure.activations import (
    channel_moments,
    check_activation_stats_config,
    histogram,
    summary,
)
from tests.layers.normtest_utils import CONV_SHAPE, init_with_random_affine, random_input


def numpy_moments(x):
    flat = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    return flat.mean(0).mean(), flat.std(0).mean()


@pytest.mark.parametrize("shape", [CONV_SHAPE, (6, 8)])
def test_channel_moments_are_numpys(shape):
    x = random_input(shape)
    np.testing.assert_allclose(channel_moments(jnp.asarray(x)), numpy_moments(x), rtol=1e-5)


def test_a_batch_norm_sows_its_input_and_output_statistics_when_asked():
    x = random_input(CONV_SHAPE)
    module = BatchNorm()
    variables = init_with_random_affine(module, x)
    y, sown = module.apply(variables, x, train=True, mutable=TRAIN_MUTABLE + (ACTIVATIONS,))
    scalars = summary(sown[ACTIVATIONS])
    input_mean, input_std = numpy_moments(x)
    output_mean, output_std = numpy_moments(np.asarray(y))
    expected = {"input_mean": input_mean, "input_std": input_std}
    expected |= {"output_mean": output_mean, "output_std": output_std}
    assert set(scalars) == {f"activations/{name}" for name in expected}  # the top module: no path
    for name, value in expected.items():
        np.testing.assert_allclose(scalars[f"activations/{name}"], value, rtol=1e-5)
    # Normalized: each channel's output has the mean of its bias and the std of its gain.
    params = variables["params"]
    np.testing.assert_allclose(output_mean, np.mean(params["bias"]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(output_std, np.mean(params["scale"]), rtol=1e-3)


def numpy_counts(values, buckets):
    """NumPy's histogram of `values` with `buckets`' own edges: the counts ours must give."""
    edges = np.append(buckets[:, 0], buckets[-1, 1])
    return np.histogram(np.asarray(values).ravel(), bins=edges)[0]


@pytest.mark.parametrize("count", [1, 7, 30])
def test_a_histogram_counts_as_numpy_does_over_equal_buckets_from_min_to_max(count):
    values = np.random.default_rng(count).standard_t(3, size=(16, 5, 5, 3)).astype(np.float32)
    buckets = np.asarray(histogram(jnp.asarray(values), count))
    assert buckets.shape == (count, 3)
    np.testing.assert_array_equal(buckets[:, 2], numpy_counts(values, buckets))
    assert buckets[:, 2].sum() == values.size
    assert buckets[0, 0] == values.min() and buckets[-1, 1] == values.max()
    np.testing.assert_array_equal(buckets[1:, 0], buckets[:-1, 1])  # adjacent
    np.testing.assert_allclose(np.diff(buckets[:, :2]), np.ptp(values) / count, rtol=1e-4)


def test_a_histogram_of_equal_values_puts_them_all_in_the_last_bucket():
    # TensorBoard's own convention for a constant tensor: zero-width buckets, the last full.
    buckets = np.asarray(histogram(jnp.full((4, 6), 2.5), 5))
    np.testing.assert_array_equal(buckets[:, :2], 2.5)
    np.testing.assert_array_equal(buckets[:, 2], [0, 0, 0, 0, 24])


def test_the_summary_histograms_each_sites_input_and_output_when_asked():
    x = random_input(CONV_SHAPE)
    module = BatchNorm()
    variables = init_with_random_affine(module, x)
    y, sown = module.apply(variables, x, train=True, mutable=TRAIN_MUTABLE + (ACTIVATIONS,))
    assert not any("histogram" in name for name in summary(sown[ACTIVATIONS]))
    values = summary(sown[ACTIVATIONS], histogram_buckets=12)
    for name, tensor in (("input", x), ("output", y)):
        buckets = np.asarray(values[f"activations/{name}_histogram"])
        assert buckets.shape == (12, 3)
        np.testing.assert_array_equal(buckets[:, 2], numpy_counts(tensor, buckets))


def test_a_train_forward_that_does_not_ask_traces_the_plain_normalization():
    # The measurement's sow must cost the train step nothing: the forward through __call__ is
    # the same program as the normalization itself.
    x = random_input(CONV_SHAPE)
    module = BatchNorm()
    variables = init_with_random_affine(module, x)

    def forward(method):
        return jax.make_jaxpr(
            lambda v: module.apply(v, x, train=True, mutable=TRAIN_MUTABLE, method=method)
        )(variables)

    assert str(forward(None)) == str(forward("normalize"))
    assert ACTIVATIONS not in module.apply(variables, x, train=True, mutable=TRAIN_MUTABLE)[1]


def test_the_noise_draws_a_mean_and_a_gain_per_channel_and_unit_noise_per_activation():
    channels, shift, scale = 6, 0.8, 2.5
    key = jax.random.key(3)
    zeros = jnp.zeros((4000, channels))
    noise = np.asarray(covariate_noise(zeros, key, shift, scale), np.float64)
    # y = 0: y' = m ~ N(mu_c, 1), mu_c in [-shift, shift].
    assert np.all(np.abs(noise.mean(0)) <= shift + 4 / np.sqrt(4000))
    np.testing.assert_allclose(noise.std(0), 1.0, rtol=0.05)
    assert np.ptp(noise.mean(0)) > 0.1  # the means differ between channels
    # The same draws on y = 10: y' - m = 10 s_c, s_c in [1, scale], the same over a channel.
    gains = (np.asarray(covariate_noise(zeros + 10.0, key, shift, scale), np.float64) - noise) / 10
    np.testing.assert_allclose(gains, np.broadcast_to(gains[:1], gains.shape), rtol=1e-5)
    assert np.all((gains >= 1.0 - 1e-5) & (gains <= scale + 1e-5)) and np.ptp(gains[0]) > 0.05
    # Another step, another distribution: non-stationary.
    other = np.asarray(covariate_noise(zeros, jax.random.key(4), shift, scale))
    assert not np.allclose(other.mean(0), noise.mean(0), atol=0.1)


def test_noisy_batch_norm_adds_noise_in_training_only():
    x = random_input(CONV_SHAPE)
    plain, noisy = BatchNorm(), BatchNorm(noise_shift=0.5, noise_gain=2.0)
    variables = init_with_random_affine(plain, x)
    rngs = {RNG_STREAM: jax.random.key(0)}
    train = lambda m: m.apply(variables, x, train=True, mutable=TRAIN_MUTABLE, rngs=rngs)[0]
    evaluate = lambda m: m.apply(variables, x, train=False)
    assert not np.allclose(train(plain), train(noisy), atol=0.1)
    np.testing.assert_array_equal(evaluate(plain), evaluate(noisy))
    np.testing.assert_array_equal(train(plain), train(BatchNorm(noise_shift=None)))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"noise_shift": -0.1}, r"noise_shift must be a finite number >= 0, got -0.1"),
        ({"noise_gain": 0.5}, r"noise_gain must be a finite number >= 1, got 0.5"),
    ],
)
def test_bad_noise_options_are_refused(options, message):
    with pytest.raises(UsageError, match=message):
        BatchNorm(**options)


@pytest.mark.parametrize(
    "block, message",
    [
        ({"enabled": "yes"}, r"activation_stats.enabled='yes' must be true or false"),
        (
            {"histogram_buckets": -1},
            r"activation_stats.histogram_buckets=-1 must be a whole number >= 0 \(0: no",
        ),
        ({"histogram_buckets": 2.5}, r"activation_stats.histogram_buckets=2.5 must be a whole"),
    ],
)
def test_a_bad_block_is_refused(block, message):
    defaults = {"enabled": True, "every": "5 steps", "histogram_buckets": 0}
    config = ml_collections.ConfigDict({**defaults, **block})
    with pytest.raises(UsageError, match=message):
        check_activation_stats_config(config)

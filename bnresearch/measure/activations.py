"""Activation statistics at every normalization site: how the distribution of a normalized layer's
input and output moves during training (Santurkar et al. 2018, arXiv:1805.11604, figure 2's
question: does batch norm keep the layer inputs' distributions still?).

For each site, of its input x and of its output y (after any injected noise, ``base.py``): the
mean and the standard deviation of each channel over the batch and spatial positions (biased,
two-pass), averaged over the channels. A normalization sows them into the ``ACTIVATIONS``
collection in training forwards that make it mutable (the measurement's, never the train
step's), so the train step's program is that of a run without them.
"""

import jax
import jax.numpy as jnp
import ml_collections

from bnresearch.config.durations import parse_duration
from bnresearch.errors import UsageError

STATISTICS = ("input_mean", "input_std", "output_mean", "output_std")


def channel_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean over channels of the per-channel mean, of the per-channel std); channels last."""
    flat = jnp.reshape(x, (-1, x.shape[-1])).astype(jnp.float32)
    mean = jnp.mean(flat, axis=0)
    std = jnp.sqrt(jnp.mean(jnp.square(flat - mean), axis=0))
    return jnp.mean(mean), jnp.mean(std)


def site_statistics(x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
    """The STATISTICS of a site with input `x` and output `y`."""
    input_mean, input_std = channel_moments(x)
    output_mean, output_std = channel_moments(y)
    return dict(zip(STATISTICS, (input_mean, input_std, output_mean, output_std)))


def summary(collection) -> dict[str, jax.Array]:
    """`activations/<site>/<statistic>` of a sown ACTIVATIONS collection; <site> is the module
    path (none for a model that is one normalization). A site called more than once in a
    forward (shared weights) logs the mean of its calls."""
    scalars = {}
    for path, values in _sites(collection):
        scalars["/".join(("activations",) + path)] = jnp.mean(jnp.stack(values))
    return scalars


def _sites(collection, path=()):
    for key, value in collection.items():
        if isinstance(value, tuple):  # what sow appends to
            yield path + (key,), list(value)
        else:
            yield from _sites(value, path + (key,))


def check_activation_stats_config(config: ml_collections.ConfigDict) -> None:
    """Raises a one-line UsageError for a bad `activation_stats` block."""
    if not isinstance(config.enabled, bool):
        raise UsageError(f"activation_stats.enabled={config.enabled!r} must be true or false")
    parse_duration(config.every)

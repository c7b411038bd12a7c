"""Activation statistics at every normalization site: how the distribution of a normalized layer's
input and output moves during training (Santurkar et al. 2018, arXiv:1805.11604, figure 2's
question: does batch norm keep the layer inputs' distributions still?).

A normalization sows its input x and its output y (after any injected noise, ``base.py``) into
the ``ACTIVATIONS`` collection in training forwards that make it mutable (the measurement's,
never the train step's), so the train step's program is that of a run without them. Of each,
``summary`` gives the mean and the standard deviation of each channel over the batch and spatial
positions (biased, two-pass), averaged over the channels; and, with `histogram_buckets` > 0, a
histogram of all its values for TensorBoard.
"""

import jax
import jax.numpy as jnp
import ml_collections

from bnresearch.config.durations import parse_duration
from bnresearch.errors import UsageError

STATISTICS = ("input_mean", "input_std", "output_mean", "output_std")
SOWN = ("input", "output")


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


def histogram(values: jax.Array, buckets: int) -> jax.Array:
    """TensorBoard's histogram of all `values`: [buckets, 3] rows of (left edge, right edge,
    count), equal widths from the minimum to the maximum, each bucket closed on the left and the
    last on both sides (NumPy's `histogram` with these edges counts the same). All values equal:
    one bucket of zero width holds them all."""
    flat = jnp.ravel(values).astype(jnp.float32)
    low, high = jnp.min(flat), jnp.max(flat)
    edges = low + (high - low) * (jnp.arange(buckets + 1, dtype=jnp.float32) / buckets)
    edges = edges.at[-1].set(high)  # exactly the maximum, whatever the rounding above
    # A value's bucket: the number of inner edges at or below it.
    index = jnp.searchsorted(edges[1:-1], flat, side="right")
    counts = jnp.bincount(index, length=buckets).astype(jnp.float32)
    return jnp.stack([edges[:-1], edges[1:], counts], axis=-1)


def summary(collection, histogram_buckets: int = 0) -> dict[str, jax.Array]:
    """`activations/<site>/<statistic>` of a sown ACTIVATIONS collection, and with
    `histogram_buckets` > 0 also `activations/<site>/{input,output}_histogram` ([buckets, 3],
    ``histogram``); <site> is the module path (none for a model that is one normalization). A
    site called more than once in a forward (shared weights) logs the mean of its calls'
    statistics and one histogram of all their values."""
    values = {}
    for path, sown in _sites(collection):
        prefix = "/".join(("activations",) + path)
        per_call = [site_statistics(x, y) for x, y in zip(sown["input"], sown["output"])]
        for name in STATISTICS:
            values[f"{prefix}/{name}"] = jnp.mean(jnp.stack([call[name] for call in per_call]))
        if histogram_buckets:
            for name in SOWN:
                pooled = jnp.concatenate([jnp.ravel(x) for x in sown[name]])
                values[f"{prefix}/{name}_histogram"] = histogram(pooled, histogram_buckets)
    return values


def _sites(collection, path=()):
    """(module path, {"input": calls, "output": calls}) of every site that sowed."""
    if all(name in collection for name in SOWN):
        yield path, collection
    for key, value in collection.items():
        if key not in SOWN:  # a submodule
            yield from _sites(value, path + (key,))


def check_activation_stats_config(config: ml_collections.ConfigDict) -> None:
    """Raises a one-line UsageError for a bad `activation_stats` block."""
    if not isinstance(config.enabled, bool):
        raise UsageError(f"activation_stats.enabled={config.enabled!r} must be true or false")
    parse_duration(config.every)
    buckets = config.histogram_buckets
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 0:
        raise UsageError(
            f"activation_stats.histogram_buckets={buckets!r} must be a whole number >= 0 "
            "(0: no histograms)"
        )

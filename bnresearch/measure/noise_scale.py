"""The gradient noise scale B_simple, measured online during training.

McCandlish, Kaplan, Amodei & OpenAI Dota Team, "An Empirical Model of Large-Batch Training",
2018, arXiv:1812.06162. B_simple = tr(Sigma) / |G|^2, with G the true gradient and Sigma the
covariance of per-example gradients, predicts the batch size beyond which a larger batch stops
paying off. A batch of B independent examples has E|G_B|^2 = |G|^2 + tr(Sigma) / B, so squared
gradient norms at two batch sizes b < B give unbiased estimates of both parts (their Appendix A.1):

    |G|^2     ~ (B |G_B|^2 - b |G_b|^2) / (B - b)
    tr(Sigma) ~ (|G_b|^2 - |G_B|^2) / (1/b - 1/B)

Single estimates are noisy (|G|^2 can come out negative), so each part is averaged by its own EMA
over measurements and B_simple is the ratio of the two EMAs. Both EMAs start at 0 with the same
decay, so their bias cancels in the ratio; the parts are logged bias-corrected.

What is computed: the training batch (B images) is cut into n = ``sub_batches`` contiguous
sub-batches of b = B/n, so on a mesh of n devices each sub-batch is one device's shard and its
gradient is computed where the data lie. g_i is the gradient of sub-batch i's mean loss computed
on sub-batch i alone; |G_b|^2 is the mean of |g_i|^2 over the n sub-batches and G_B = mean_i g_i.
For a network without batch statistics G_B is exactly the training gradient. With batch norm the
examples of a batch are coupled, so no slice of the global-batch gradient is a sub-batch
gradient: here every sub-batch is normalized with its own statistics (as in data-parallel
training with per-device batch norm), so both norms are those of the network normalized over b
examples, a consistent pair, but not of the global batch norm the train step uses. Batch
augmentation's copies are counted as examples, which they are not quite (they are correlated).
"""

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from bnresearch.config.durations import parse_duration
from bnresearch.errors import UsageError


@flax.struct.dataclass
class NoiseScaleState:
    """Running EMAs of the two estimates, part of the train state and its checkpoints."""

    gradient_sq: jax.Array  # EMA of the |G|^2 estimates (not bias-corrected)
    trace: jax.Array  # EMA of the tr(Sigma) estimates (not bias-corrected)
    count: jax.Array  # measurements so far


def init_noise_scale() -> NoiseScaleState:
    zero = jnp.zeros((), jnp.float32)
    return NoiseScaleState(gradient_sq=zero, trace=zero, count=jnp.zeros((), jnp.int32))


def _squared_norm(tree) -> jax.Array:
    return sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(tree))


def sub_batch_gradient_norms(gradient_fn, batch: dict, sub_batches: int, rng: jax.Array):
    """(|G_b|^2, |G_B|^2) of `batch` cut into `sub_batches` contiguous sub-batches.

    `gradient_fn(sub_batch, rng)` returns the gradient pytree of the mean loss over `sub_batch`.
    """
    split = jax.tree.map(
        lambda x: x.reshape(sub_batches, x.shape[0] // sub_batches, *x.shape[1:]), batch
    )
    gradients = jax.vmap(gradient_fn)(split, jax.random.split(rng, sub_batches))
    small_sq = jnp.mean(jax.vmap(_squared_norm)(gradients))
    big_sq = _squared_norm(jax.tree.map(lambda g: jnp.mean(g, axis=0), gradients))
    return small_sq, big_sq


def estimate(small_sq, big_sq, small_batch: int, big_batch: int):
    """Unbiased single-measurement estimates (|G|^2, tr(Sigma)) from the two squared norms."""
    gradient_sq = (big_batch * big_sq - small_batch * small_sq) / (big_batch - small_batch)
    trace = (small_sq - big_sq) / (1.0 / small_batch - 1.0 / big_batch)
    return gradient_sq, trace


def update(state: NoiseScaleState, gradient_sq, trace, decay: float) -> NoiseScaleState:
    return NoiseScaleState(
        gradient_sq=decay * state.gradient_sq + (1 - decay) * gradient_sq,
        trace=decay * state.trace + (1 - decay) * trace,
        count=state.count + 1,
    )


def summary(state: NoiseScaleState, decay: float) -> dict[str, jax.Array]:
    """The scalars logged as train/noise_scale, train/noise_scale_gradient_sq and ..._trace."""
    bias_correction = 1.0 - decay ** state.count.astype(jnp.float32)
    return {
        "noise_scale": state.trace / state.gradient_sq,
        "noise_scale_gradient_sq": state.gradient_sq / bias_correction,
        "noise_scale_trace": state.trace / bias_correction,
    }


def check_noise_scale_config(config: ml_collections.ConfigDict, batch_sizes) -> None:
    """Raises UsageError for a bad `noise_scale` block; `batch_sizes`: the images per train-step
    call of every phase, which the sub-batches must divide. The ranges of its numbers are
    checked first, by ``config/ranges.py`` (``preflight.check_config``)."""
    if not isinstance(config.enabled, bool):
        raise UsageError(f"noise_scale.enabled={config.enabled!r} must be true or false")
    parse_duration(config.every)
    sub_batches = config.sub_batches
    if config.enabled:
        for size in batch_sizes:
            if size % sub_batches:
                raise UsageError(
                    f"noise_scale.sub_batches={sub_batches} does not divide the "
                    f"batch of {size}; use a divisor of it"
                )

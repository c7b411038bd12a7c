"""Batch-layer normalization (BLN).

Reference: Ziaee & Cano, "Batch Layer Normalization, A new normalization layer for CNNs and
RNN", 2022, arXiv:2209.08898 (code: github.com/A2Amir/Batch-Layer-Normalization).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnresearch.errors import UsageError
from bnresearch.layers.normalization.base import (
    Normalization,
    check_epsilon,
    mean_and_variance,
    scale_and_bias,
)
from bnresearch.layers.options import option
from bnresearch.layers.variables import STATE

KIND = "batch_layer norm"
# The paper's fixed offsets of the two weights: (1/B - 1e-4) and (1 - 1/B - 1e-4).
WEIGHT_OFFSET = 1e-4
SWITCHES = (
    "population_batch_mean",
    "population_batch_var",
    "population_feature_mean",
    "population_feature_var",
)


def bln_weights(batch_size) -> tuple:
    """The weights of the feature and batch branches for training batch size B."""
    return 1.0 / batch_size - WEIGHT_OFFSET, 1.0 - 1.0 / batch_size - WEIGHT_OFFSET


def bessel(count: int) -> float:
    """n / (n - 1); 1 for n = 1, where the biased variance is 0 and stays 0."""
    return count / (count - 1) if count > 1 else 1.0


class BatchLayerNorm(Normalization):
    """BLN (Ziaee & Cano 2022): a mixture of batch and feature normalization weighted by the
    inverse batch size.

    Training, with B the batch size and d the channel count:
      xb = (x - mu_b) / sqrt(var_b + eps)   statistics over the batch axis only: one per spatial
                                            position and channel
      xf = (x - mu_f) / sqrt(var_f + eps)   statistics over the channel axis only: one per example
                                            and spatial position
      y = gamma * [(1/B - 1e-4) xf + (1 - 1/B - 1e-4) xb] / sqrt(d) + beta
    eps = 1e-3. As B -> 1 it tends to layer norm over channels, as B grows to batch norm (over
    the batch axis). B is the size of the batch the layer trains on (the global batch under
    jit); evaluation weighs the branches with the B of the last training step, kept in
    ``batch_stats`` (so it is checkpointed).

    Population statistics: the means, over the training batches of the current epoch, of the
    four statistics, variances Bessel-corrected (B/(B-1) for var_b, d/(d-1) for var_f), reset at
    the first step of every epoch, as the authors' Keras callback does. The layer counts its
    training forward passes in ``batch_stats``; an epoch is ``images_per_epoch // B`` of them
    (the loop's epoch), ``images_per_epoch`` being the training images a layer sees in an epoch
    (the training examples, times the copies of batch augmentation), a fact ``build_model``
    passes in. Without it (a model built outside a run) the statistics accumulate over all of
    training.
    Evaluation at the end of an epoch therefore uses exactly that epoch's statistics, and one in
    the middle of an epoch the part of it seen so far. The population feature statistics are
    also averaged over the examples (the authors' code keeps one per position in the batch,
    which shuffling makes equal in expectation), so they apply to evaluation batches of any size.

    Evaluation: four switches choose, statistic by statistic, the population statistic (true)
    or that of the current evaluation batch (false); the defaults are the authors': population
    for the batch branch, current for the feature branch. A current batch statistic at
    evaluation sees the zero images that pad the last evaluation batch.

    At B = 1 the batch branch has weight -1e-4 and zero variance: BLN is then layer norm over
    the channels, which the paper trains with.
    """

    epsilon: float = 1e-3
    scale_init: float = 1.0
    population_batch_mean: bool = True
    population_batch_var: bool = True
    population_feature_mean: bool = False
    population_feature_var: bool = False
    # A build-time fact, not an option: the training images per epoch.
    images_per_epoch: int | None = None

    def __post_init__(self):
        check_epsilon(KIND, self.epsilon)
        for switch in SWITCHES:
            if not isinstance(getattr(self, switch), bool):
                raise UsageError(
                    f"{KIND}: {switch} must be true or false, got {getattr(self, switch)!r}"
                )
        super().__post_init__()

    @nn.compact
    def normalize(self, x: jax.Array, train: bool) -> jax.Array:
        epsilon = option(self, "epsilon", self.epsilon)
        num_features = x.shape[-1]
        scale, bias = scale_and_bias(self, num_features)
        batch_shape = x.shape[1:]  # (H, W, C): one per position and channel
        feature_shape = (*x.shape[1:-1], 1)  # (H, W, 1): one per position
        state = {
            "batch_size": self.variable(
                STATE, "batch_size", lambda: jnp.asarray(x.shape[0], jnp.float32)
            ),
            "steps": self.variable(STATE, "epoch_steps", jnp.zeros, (), jnp.int32),
            "batch_mean": self.variable(
                STATE, "batch_mean_sum", jnp.zeros, batch_shape, jnp.float32
            ),
            "batch_var": self.variable(STATE, "batch_var_sum", jnp.zeros, batch_shape, jnp.float32),
            "feature_mean": self.variable(
                STATE, "feature_mean_sum", jnp.zeros, feature_shape, jnp.float32
            ),
            "feature_var": self.variable(
                STATE, "feature_var_sum", jnp.zeros, feature_shape, jnp.float32
            ),
        }
        x = x.astype(jnp.float32)
        batch_mean, batch_var = mean_and_variance(x, (0,))
        feature_mean, feature_var = mean_and_variance(x, (x.ndim - 1,))
        if train:
            batch_size = x.shape[0]
            if not self.is_initializing():
                self._accumulate(
                    state,
                    batch_size,
                    batch_mean,
                    batch_var * bessel(batch_size),
                    feature_mean,
                    feature_var * bessel(num_features),
                )
        else:
            batch_size = state["batch_size"].value
            population = self._population(state)
            current = {
                "batch_mean": batch_mean,
                "batch_var": batch_var,
                "feature_mean": feature_mean,
                "feature_var": feature_var,
            }
            chosen = {
                key: population[key] if getattr(self, f"population_{key}") else current[key]
                for key in current
            }
            batch_mean, batch_var = chosen["batch_mean"], chosen["batch_var"]
            feature_mean, feature_var = chosen["feature_mean"], chosen["feature_var"]
        batch_branch = (x - batch_mean) * jax.lax.rsqrt(batch_var + epsilon)
        feature_branch = (x - feature_mean) * jax.lax.rsqrt(feature_var + epsilon)
        feature_weight, batch_weight = bln_weights(batch_size)
        z = (feature_weight * feature_branch + batch_weight * batch_branch) / jnp.sqrt(
            jnp.float32(num_features)
        )
        return (z * scale + bias).astype(self.dtype)

    @nn.nowrap
    def _accumulate(self, state, batch_size, batch_mean, batch_var, feature_mean, feature_var):
        """Adds this step's statistics to the epoch's sums, first emptying them if the previous
        step completed an epoch."""
        steps = state["steps"].value
        if self.images_per_epoch is None:
            keep = jnp.float32(1.0)
        else:
            steps_per_epoch = max(self.images_per_epoch // batch_size, 1)
            keep = (steps < steps_per_epoch).astype(jnp.float32)
        statistics = {
            "batch_mean": batch_mean[0],
            "batch_var": batch_var[0],
            "feature_mean": jnp.mean(feature_mean, axis=0),
            "feature_var": jnp.mean(feature_var, axis=0),
        }
        for key, value in statistics.items():
            state[key].value = keep * state[key].value + value
        state["steps"].value = keep.astype(jnp.int32) * steps + 1
        state["batch_size"].value = jnp.asarray(batch_size, jnp.float32)

    @nn.nowrap
    def _population(self, state) -> dict:
        """The means of the accumulated statistics; mean 0, variance 1 before any step."""
        steps = state["steps"].value
        seen = steps > 0
        divisor = jnp.maximum(steps, 1).astype(jnp.float32)
        population = {}
        for key in ("batch_mean", "batch_var", "feature_mean", "feature_var"):
            before_training = 0.0 if key.endswith("mean") else 1.0
            population[key] = jnp.where(seen, state[key].value / divisor, before_training)
        return population

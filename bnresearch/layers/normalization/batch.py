"""Batch normalization and ghost (virtual) batch normalization.

References:
  batch: Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing
    Internal Covariate Shift", ICML 2015, arXiv:1502.03167.
  ghost_batch: Hoffer, Hubara & Soudry, "Train longer, generalize better: closing the
    generalization gap in large batch training of neural networks", NeurIPS 2017,
    arXiv:1705.08741.
  small initial gain (``scale_init``): Davis & Frank, "Revisiting Batch Normalization
    Initialization", ECCV 2022, arXiv:2110.13989.
"""

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnresearch.errors import UsageError
from bnresearch.layers.normalization.base import (
    Normalization,
    check_choice,
    check_enough_values,
    check_epsilon,
    check_fraction,
    check_positive_int,
    elements_per_channel,
    mean_and_variance,
    running_average,
    scale_and_bias,
)
from bnresearch.layers.options import option
from bnresearch.layers.variables import MOMENTS, STATE

MOMENTUM_CONVENTIONS = ("flax", "pytorch")
# The same EMA in both conventions: 0.9 on the old value is PyTorch's 0.1 on the new one.
DEFAULT_MOMENTUM = {"flax": 0.9, "pytorch": 0.1}
EVAL_STATISTICS = ("running", "batch")


def update_running(
    running: jax.Array, statistic: jax.Array, momentum: float, convention: str
) -> jax.Array:
    """One EMA step: ``momentum`` weighs the old value ('flax') or the new one ('pytorch')."""
    return running_average(running, statistic, momentum if convention == "flax" else 1.0 - momentum)


class BatchNorm(Normalization):
    """Batch normalization (Ioffe & Szegedy 2015) over every axis but the last (channel) one.

    Training normalizes with the statistics of the current batch (gradients flow through them)
    and folds them into running statistics; evaluation normalizes with the running statistics
    (``eval_statistics='running'``) or with those of the evaluation batch (``'batch'``, which
    makes evaluation depend on the batch: the last evaluation batch of a run is padded with zero
    images, which then take part in the statistics). The running statistics start at mean 0,
    variance 1, and ``init`` does not update them (its forward pass is not a step).

    ``momentum_convention`` makes the EMA explicit, because results depend on it:
      'flax' (default): ``running = momentum * running + (1 - momentum) * batch_statistic``;
        momentum weighs the OLD value (Flax, Keras); default 0.9. The running variance
        averages the biased batch variance.
      'pytorch': ``running = (1 - momentum) * running + momentum * batch_statistic``; momentum
        weighs the NEW value; default 0.1 (the same EMA as 0.9 above). The running variance
        averages the unbiased batch variance, m / (m - 1) times the biased one for m reduced
        elements per channel, as ``torch.nn.BatchNorm2d`` stores it. Training normalizes with the
        biased variance in both conventions, as both libraries do.

    The statistics are plain ``jnp.mean`` reductions, so under ``jax.jit`` with the batch axis
    sharded over a mesh they are the statistics of the GLOBAL batch (XLA inserts the cross-device
    reduction). Under ``shard_map``/``pmap`` they would be per-device.

    Fine-tuning (``fine_tune.norm``, ``bnresearch/train/transfer.py``) sets the build fact
    ``frozen_statistics``: training then normalizes with the running statistics, as evaluation
    does, and leaves them unchanged. In every training forward that updates the running
    statistics the layer also sows, into the ``moments`` collection, the statistics the EMA step
    takes (batch mean and variance), which re-estimating the population statistics averages; a
    forward whose ``moments`` are not mutable (every train step) sows nothing.

    ``scale_init`` < 1 with ``optimizer.lr_multipliers.scale=0.01`` and
    ``optimizer.weight_decay_on=kernels`` is Davis & Frank's recipe (gamma 0.1, its lr / 100, no
    decay on normalization parameters and biases).
    """

    momentum: float | None = None
    epsilon: float = 1e-5
    scale_init: float = 1.0
    momentum_convention: str = "flax"
    eval_statistics: str = "running"
    frozen_statistics: bool = False  # a build fact (fine_tune.norm), not an option

    kind: ClassVar[str] = "batch norm"

    def __post_init__(self):
        check_choice(
            self.kind, "momentum_convention", self.momentum_convention, MOMENTUM_CONVENTIONS
        )
        check_choice(self.kind, "eval_statistics", self.eval_statistics, EVAL_STATISTICS)
        if self.momentum is not None:
            check_fraction(self.kind, "momentum", self.momentum)
        check_epsilon(self.kind, self.epsilon)
        super().__post_init__()

    @property
    def resolved_momentum(self) -> float:
        return (
            DEFAULT_MOMENTUM[self.momentum_convention] if self.momentum is None else self.momentum
        )

    @nn.nowrap
    def group_size(self, batch_size: int) -> int:
        """Examples per set of statistics: the whole batch here, the virtual batch for ghost."""
        return batch_size

    @nn.compact
    def normalize(self, x: jax.Array, train: bool) -> jax.Array:
        epsilon = option(self, "epsilon", self.epsilon)
        momentum = option(self, "momentum", self.resolved_momentum)
        num_features = x.shape[-1]
        scale, bias = scale_and_bias(self, num_features)
        running_mean = self.variable(STATE, "mean", jnp.zeros, (num_features,), jnp.float32)
        running_var = self.variable(STATE, "var", jnp.ones, (num_features,), jnp.float32)
        x = x.astype(jnp.float32)
        running = self.frozen_statistics if train else self.eval_statistics == "running"
        if running:
            y = (x - running_mean.value) * (jax.lax.rsqrt(running_var.value + epsilon) * scale)
            return (y + bias).astype(self.dtype)

        # Groups of consecutive examples, (G, v, ...): one group for batch norm. A contiguous
        # split keeps each group on one device whenever v divides the per-device batch (the
        # mesh shards the batch axis into contiguous blocks), so ghost statistics then need no
        # communication; the result is the same either way, as jit's semantics are global.
        batch_size = x.shape[0]
        group_size = self.group_size(batch_size)
        if batch_size % group_size:
            raise UsageError(
                f"{self.kind}: a batch of {batch_size} does not split into groups of {group_size}"
            )
        grouped = x.reshape(batch_size // group_size, group_size, *x.shape[1:])
        axes = tuple(range(1, grouped.ndim - 1))
        count = elements_per_channel(grouped, axes)
        check_enough_values(self.kind, count, f"a batch statistic of {x.shape} features")
        mean, var = mean_and_variance(grouped, axes)
        # The gain folded into the per-channel multiplier (as in the running-statistics path
        # above): one multiply-add over the activations instead of two multiplies and an add,
        # and no gain broadcast to the activations' shape, which XLA's CPU backend materializes
        # (see benchmarks/README.md).
        multiplier = jax.lax.rsqrt(var + epsilon) * scale
        y = ((grouped - mean) * multiplier).reshape(x.shape)
        if train and not self.is_initializing():
            # One EMA step per training step whatever the number of groups, so that momentum
            # keeps its meaning (a time constant in steps). Its statistics: the mean of the
            # group means (the batch mean) and the mean of the group variances, i.e. the
            # variance the groups were actually normalized with, on average; with one group
            # this is batch norm's update exactly.
            var_for_running = (
                var * (count / (count - 1)) if self.momentum_convention == "pytorch" else var
            )
            convention = self.momentum_convention
            batch_mean = jnp.mean(mean, axis=(0, *axes))
            batch_var = jnp.mean(var_for_running, axis=(0, *axes))
            self.sow(MOMENTS, "mean", batch_mean)
            self.sow(MOMENTS, "var", batch_var)
            running_mean.value = update_running(
                running_mean.value, batch_mean, momentum, convention
            )
            running_var.value = update_running(running_var.value, batch_var, momentum, convention)
        return (y + bias).astype(self.dtype)


class GhostBatchNorm(BatchNorm):
    """Ghost batch normalization (Hoffer et al. 2017): batch norm whose training statistics are
    taken per virtual batch of ``virtual_batch_size`` consecutive examples (default 128, the
    paper's), so that a large batch keeps the normalization noise of a small one. Scale and
    shift are shared; evaluation uses running statistics updated once per step with the mean
    over virtual batches of their means and variances (see ``BatchNorm.normalize``). With
    ``eval_statistics='batch'`` evaluation batches are split the same way.

    A batch that does not split into virtual batches is refused when the model is built, and
    ``virtual_batch_size`` equal to the batch size is batch norm. The options of batch norm
    (momentum and its convention, epsilon, scale_init, eval_statistics) apply.
    """

    virtual_batch_size: int = 128

    kind: ClassVar[str] = "ghost batch norm"

    def __post_init__(self):
        check_positive_int(self.kind, "virtual_batch_size", self.virtual_batch_size)
        super().__post_init__()

    @nn.nowrap
    def group_size(self, batch_size: int) -> int:
        return self.virtual_batch_size

    @nn.nowrap
    def check_batch_sizes(self, batch_size: int, eval_batch_size: int | None) -> None:
        sizes = [("batch_size", batch_size)]
        if self.eval_statistics == "batch" and eval_batch_size is not None:
            sizes.append(("eval_batch_size", eval_batch_size))
        for field, size in sizes:
            if size % self.virtual_batch_size:
                raise UsageError(
                    f"ghost batch norm: {field}={size} does not split into virtual batches of "
                    f"virtual_batch_size={self.virtual_batch_size}; use a multiple of it or set "
                    f"model.norm_kwargs.virtual_batch_size to a divisor of {size}"
                )

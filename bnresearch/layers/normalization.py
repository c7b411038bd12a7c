"""Normalization layers and their registry.

Every normalization is a linen Module with a ``dtype`` field and ``__call__(x, train)``. Inputs
are channels-last: (N, H, W, C) after a conv, (N, C) after a dense layer. Statistics and the
normalization itself are computed in float32 whatever ``dtype`` is, and only the output is cast to
``dtype``: reductions in bfloat16 lose too much precision, and the element-wise float32 work is
cheap next to the convs around it. Parameters (per-channel ``scale`` and ``bias``) are float32;
running statistics live in the ``'batch_stats'`` collection.

Variances are biased (divide by the number of reduced elements) and computed in two passes,
E[(x - E[x])^2], which unlike E[x^2] - E[x]^2 cannot cancel catastrophically.

Every normalization with a learnable gain has a ``scale_init`` option (default 1): Davis & Frank
2022 start every gamma below 1, and residual networks often start the last gamma of each block
at 0 (``LayerKit.norm(..., zero_scale=True)``).

References:
  batch: Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing
    Internal Covariate Shift", ICML 2015, arXiv:1502.03167.
  layer: Ba, Kiros & Hinton, "Layer Normalization", 2016, arXiv:1607.06450.
  group: Wu & He, "Group Normalization", ECCV 2018, arXiv:1803.08494.
"""
from typing import ClassVar

import jax
import jax.numpy as jnp
import flax.linen as nn
from flax.typing import Dtype

from bnresearch.layers.registry import ModuleFactory, lookup
from bnresearch.errors import UsageError

DEFAULT_NUM_GROUPS = 32  # Wu & He's default


def _check_epsilon(kind: str, epsilon: float) -> None:
    if not epsilon > 0:
        raise UsageError(f'{kind}: epsilon must be > 0, got {epsilon!r}')


def _scale_and_bias(module: nn.Module, num_features: int) -> tuple[jax.Array, jax.Array]:
    """The learnable per-channel affine transform: gain ``module.scale_init``, shift 0.

    The gain is named ``scale`` in every normalization: parameter groups (per-group lr, weight
    decay masks) find gammas by that name.
    """
    scale = module.param('scale', nn.initializers.constant(module.scale_init), (num_features,),
                         jnp.float32)
    bias = module.param('bias', nn.initializers.zeros, (num_features,), jnp.float32)
    return scale, bias


def _mean_and_variance(x: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance over `axes` (kept as size-1 axes), two-pass."""
    mean = jnp.mean(x, axis=axes, keepdims=True)
    variance = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    return mean, variance


class Normalization(nn.Module):
    """Base of every normalization: the output dtype and a build-time channel-count check."""
    dtype: Dtype = jnp.float32
    # Whether the layer ends with a learned per-channel shift; the conv or dense layer before it
    # then needs no bias of its own.
    adds_bias: ClassVar[bool] = True

    @nn.nowrap
    def check_features(self, num_features: int) -> None:
        """Raises UsageError if this normalization cannot normalize `num_features` channels.

        Models call it from ``build_model`` for every width they normalize, so that a bad
        configuration fails when the model is built rather than at init. Most accept anything.
        """


class BatchNorm(Normalization):
    """Batch normalization (Ioffe & Szegedy 2015) over every axis but the last (channel) one.

    Training normalizes with the statistics of the current batch and folds them into running
    statistics; evaluation normalizes with the running statistics. The running statistics start
    at mean 0, variance 1, and ``init`` does not update them (its forward pass is not a step).

    Convention, exactly: ``running = momentum * running + (1 - momentum) * batch_statistic``, i.e.
    ``momentum`` weighs the OLD value, as in Flax/Keras. PyTorch's ``momentum`` weighs the new
    value, so the default 0.9 here equals PyTorch's default 0.1. The running variance is updated
    with the biased batch variance (Flax/Keras; PyTorch uses the unbiased one, larger by
    m / (m - 1) for m reduced elements per channel, which is negligible for conv features).

    The statistics are plain ``jnp.mean`` reductions, so under ``jax.jit`` with the batch axis
    sharded over a mesh they are the statistics of the GLOBAL batch (XLA inserts the cross-device
    reduction). Under ``shard_map``/``pmap`` they would be per-device.
    """
    momentum: float = 0.9
    epsilon: float = 1e-5
    scale_init: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.momentum <= 1.0:
            raise UsageError(f'batch norm: momentum must lie in [0, 1], got {self.momentum!r}')
        _check_epsilon('batch norm', self.epsilon)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        num_features = x.shape[-1]
        scale, bias = _scale_and_bias(self, num_features)
        running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (num_features,), jnp.float32)
        running_var = self.variable('batch_stats', 'var', jnp.ones, (num_features,), jnp.float32)
        x = x.astype(jnp.float32)
        if train:
            mean, var = _mean_and_variance(x, tuple(range(x.ndim - 1)))
            mean, var = mean.reshape(num_features), var.reshape(num_features)
            if not self.is_initializing():
                running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
                running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
        else:
            mean, var = running_mean.value, running_var.value
        y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
        return y.astype(self.dtype)


class LayerNorm(Normalization):
    """Layer normalization (Ba et al. 2016): each example over all its non-batch axes.

    For conv features that is (H, W, C) together. The learnable scale and bias are per channel.
    ``epsilon`` defaults to 1e-5 (PyTorch's default; Flax's own LayerNorm uses 1e-6).
    """
    epsilon: float = 1e-5
    scale_init: float = 1.0

    def __post_init__(self):
        _check_epsilon('layer norm', self.epsilon)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        del train  # per-example statistics: training and evaluation are the same computation
        scale, bias = _scale_and_bias(self, x.shape[-1])
        x = x.astype(jnp.float32)
        mean, var = _mean_and_variance(x, tuple(range(1, x.ndim)))
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(self.dtype)


class GroupNorm(Normalization):
    """Group normalization (Wu & He 2018): each example and channel group over (H, W, C/G).

    Give ``num_groups`` (G) or ``group_size`` (C/G), not both; with neither, G = 32 as in the
    paper. The channel count must divide evenly. G = 1 is layer norm over (H, W, C); G = C is
    instance norm. The learnable scale and bias are per channel; ``epsilon`` defaults to 1e-5.
    """
    num_groups: int | None = None
    group_size: int | None = None
    epsilon: float = 1e-5
    scale_init: float = 1.0

    def __post_init__(self):
        if self.num_groups is not None and self.group_size is not None:
            raise UsageError('group norm: give num_groups or group_size, not both')
        for option in ('num_groups', 'group_size'):
            value = getattr(self, option)
            if value is not None and not (isinstance(value, int) and value > 0):
                raise UsageError(f'group norm: {option} must be a positive int, got {value!r}')
        _check_epsilon('group norm', self.epsilon)
        super().__post_init__()

    @nn.nowrap
    def group_count(self, num_features: int) -> int:
        """The number of groups for `num_features` channels; UsageError if they do not divide."""
        if self.group_size is not None:
            if num_features % self.group_size:
                raise UsageError(f'group norm: {num_features} channels do not divide into groups '
                                 f'of group_size={self.group_size}')
            return num_features // self.group_size
        num_groups = self.num_groups or DEFAULT_NUM_GROUPS
        if num_features % num_groups:
            raise UsageError(f'group norm: {num_features} channels do not divide into '
                             f'num_groups={num_groups} groups; set num_groups or group_size')
        return num_groups

    @nn.nowrap
    def check_features(self, num_features: int) -> None:
        self.group_count(num_features)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        del train  # per-example statistics: training and evaluation are the same computation
        num_features = x.shape[-1]
        num_groups = self.group_count(num_features)
        scale, bias = _scale_and_bias(self, num_features)
        group_size = num_features // num_groups
        grouped = x.astype(jnp.float32).reshape(*x.shape[:-1], num_groups, group_size)
        # Reduce over the spatial axes and the channels within a group, not over the group axis.
        mean, var = _mean_and_variance(grouped, (*range(1, grouped.ndim - 2), grouped.ndim - 1))
        normalized = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        return (normalized * scale + bias).astype(self.dtype)


class Identity(Normalization):
    """No normalization: passes the input through, cast to ``dtype``; no parameters."""
    adds_bias: ClassVar[bool] = False

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        del train
        return x.astype(self.dtype)


NORMALIZATIONS: dict[str, ModuleFactory] = {
    'batch': BatchNorm,
    'layer': LayerNorm,
    'group': GroupNorm,
    'none': Identity,
}


def get_normalization(name: str, **options) -> ModuleFactory:
    """Normalization `name` with `options` bound: a factory called as ``norm(name=..., dtype=...)``.

    Unknown names and options, and invalid option values, raise UsageError here. ``dtype`` is not
    an option: the model sets it to its own compute dtype.
    """
    factory = lookup('normalization', NORMALIZATIONS, name, options, reserved=('dtype',))
    factory(parent=None)  # a detached instance, built only so that bad option values raise now
    return factory


def check_normalization_features(norm: ModuleFactory, num_features: int) -> None:
    """Raises UsageError if the normalizations `norm` makes cannot take `num_features` channels."""
    norm(parent=None).check_features(num_features)

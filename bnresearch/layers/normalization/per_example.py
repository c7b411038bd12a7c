"""Normalizations with per-example statistics: layer, group and instance normalization.

They compute the same thing in training and evaluation, keep no state, and work at any batch
size, batch size 1 included.

References:
  layer: Ba, Kiros & Hinton, "Layer Normalization", 2016, arXiv:1607.06450.
  group: Wu & He, "Group Normalization", ECCV 2018, arXiv:1803.08494.
  instance: Ulyanov, Vedaldi & Lempitsky, "Instance Normalization: The Missing Ingredient for
    Fast Stylization", 2016, arXiv:1607.08022.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnresearch.errors import UsageError
from bnresearch.layers.normalization.base import (
    Normalization,
    check_enough_values,
    check_epsilon,
    elements_per_channel,
    mean_and_variance,
    scale_and_bias,
    spatial_axes,
)
from bnresearch.layers.options import option

DEFAULT_NUM_GROUPS = 32  # Wu & He's default


class LayerNorm(Normalization):
    """Layer normalization (Ba et al. 2016): each example over all its non-batch axes.

    For conv features that is (H, W, C) together. The learnable scale and bias are per channel.
    ``epsilon`` defaults to 1e-5 (PyTorch's default; Flax's own LayerNorm uses 1e-6).
    """

    epsilon: float = 1e-5
    scale_init: float = 1.0

    def __post_init__(self):
        check_epsilon("layer norm", self.epsilon)
        super().__post_init__()

    @nn.compact
    def normalize(self, x: jax.Array, train: bool) -> jax.Array:
        epsilon = option(self, "epsilon", self.epsilon)
        del train  # per-example statistics: training and evaluation are the same computation
        scale, bias = scale_and_bias(self, x.shape[-1])
        x = x.astype(jnp.float32)
        mean, var = mean_and_variance(x, tuple(range(1, x.ndim)))
        y = (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias
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
            raise UsageError("group norm: give num_groups or group_size, not both")
        for field in ("num_groups", "group_size"):
            value = getattr(self, field)
            if value is not None and not (isinstance(value, int) and value > 0):
                raise UsageError(f"group norm: {field} must be a positive int, got {value!r}")
        check_epsilon("group norm", self.epsilon)
        super().__post_init__()

    @nn.nowrap
    def group_count(self, num_features: int) -> int:
        """The number of groups for `num_features` channels; UsageError if they do not divide."""
        if self.group_size is not None:
            if num_features % self.group_size:
                raise UsageError(
                    f"group norm: {num_features} channels do not divide into groups "
                    f"of group_size={self.group_size}"
                )
            return num_features // self.group_size
        num_groups = self.num_groups or DEFAULT_NUM_GROUPS
        if num_features % num_groups:
            raise UsageError(
                f"group norm: {num_features} channels do not divide into "
                f"num_groups={num_groups} groups; set num_groups or group_size"
            )
        return num_groups

    @nn.nowrap
    def check_features(self, num_features: int) -> None:
        self.group_count(num_features)

    @nn.compact
    def normalize(self, x: jax.Array, train: bool) -> jax.Array:
        epsilon = option(self, "epsilon", self.epsilon)
        del train  # per-example statistics: training and evaluation are the same computation
        num_features = x.shape[-1]
        num_groups = self.group_count(num_features)
        scale, bias = scale_and_bias(self, num_features)
        group_size = num_features // num_groups
        grouped = x.astype(jnp.float32).reshape(*x.shape[:-1], num_groups, group_size)
        # Reduce over the spatial axes and the channels within a group, not over the group axis.
        mean, var = mean_and_variance(grouped, (*range(1, grouped.ndim - 2), grouped.ndim - 1))
        normalized = ((grouped - mean) * jax.lax.rsqrt(var + epsilon)).reshape(x.shape)
        return (normalized * scale + bias).astype(self.dtype)


class InstanceNorm(Normalization):
    """Instance normalization (Ulyanov et al. 2016): each example and channel over (H, W).

    Group norm with one channel per group. Features without spatial extent ((N, C) after a dense
    layer, or 1x1 maps) leave one value per statistic, which normalizing would erase: refused
    when the model is built. ``epsilon`` defaults to 1e-5.
    """

    epsilon: float = 1e-5
    scale_init: float = 1.0

    def __post_init__(self):
        check_epsilon("instance norm", self.epsilon)
        super().__post_init__()

    @nn.compact
    def normalize(self, x: jax.Array, train: bool) -> jax.Array:
        epsilon = option(self, "epsilon", self.epsilon)
        del train  # per-example statistics: training and evaluation are the same computation
        axes = spatial_axes(x)
        check_enough_values(
            "instance norm",
            elements_per_channel(x, axes),
            f"the statistic over the spatial axes of {x.shape} features",
            remedy="use layer or group norm where features have no spatial axes",
        )
        scale, bias = scale_and_bias(self, x.shape[-1])
        x = x.astype(jnp.float32)
        mean, var = mean_and_variance(x, axes)
        y = (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias
        return y.astype(self.dtype)

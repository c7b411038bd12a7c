"""Weight normalization with its data-dependent initialization, and mean-only batch norm.

Reference: Salimans & Kingma, "Weight Normalization: A Simple Reparameterization to Accelerate
Training of Deep Neural Networks", NeurIPS 2016, arXiv:1602.07868.

Weight normalization reparametrizes the conv and dense layers themselves, w = g v / ||v|| per
output unit, so it lives in the LayerKit's weight-layer factories: choosing ``norm='weight'``
makes ``build_model`` replace the kit's plain conv and dense factories by the ones below
(``WeightNorm.adapt_kit``), in every layer of the model, the logits layer included (as in the
paper, whose data-dependent init then starts the logits at zero mean and unit variance over the
first batch). What remains in the normalization slot after each weight layer is either nothing
or, with ``mean_only_batch_norm=True``, the paper's mean-only batch norm.
"""

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

from bnresearch.errors import UsageError
from bnresearch.layers.convolution import conv_general_dilated
from bnresearch.layers.normalization.base import (
    Normalization,
    check_enough_values,
    check_fraction,
    elements_per_channel,
    running_average,
)
from bnresearch.layers.options import option
from bnresearch.layers.variables import STATE

KIND = "weight norm"
# v ~ N(0, 0.05^2), the paper's initialization of the directions.
DIRECTION_STDDEV = 0.05
# Keeps g = 1 / std(t) finite for a unit whose output is constant on the first batch (the
# constant of the authors' code).
INIT_VARIANCE_FLOOR = 1e-10


def _direction_normalized(v: jax.Array) -> jax.Array:
    """v / ||v|| per output unit (the last axis), the norm over all the other axes."""
    squared_norm = jnp.sum(jnp.square(v), axis=tuple(range(v.ndim - 1)), keepdims=True)
    return v * jax.lax.rsqrt(squared_norm)


def _gain_and_bias(
    module: nn.Module, t: jax.Array, use_bias: bool, data_dependent_init: bool
) -> jax.Array:
    """g * t + b for t = v.x / ||v||, with g and b from the data of the init pass.

    Salimans & Kingma's data-dependent init: on the first batch, g = 1 / std(t) and
    b = -mean(t) / std(t) per unit (statistics over every axis but the last), so that each unit
    starts with zero mean and unit variance on real data, layer after layer as the init pass
    runs through the model. The init functions close over t; flax calls them only during
    ``init``, which is a training-mode forward on the first real batch (``create_train_state``).
    Without the data-dependent init, g = 1 and b = 0 (||w|| = 1 per unit).
    """
    features = t.shape[-1]
    if data_dependent_init:

        def init_from_data(quantity):
            def init(rng, shape, dtype=jnp.float32):
                del rng
                axes = tuple(range(t.ndim - 1))
                check_enough_values(
                    KIND,
                    elements_per_channel(t, axes),
                    f"the data-dependent init of {t.shape} outputs",
                )
                t32 = t.astype(jnp.float32)
                mean = jnp.mean(t32, axis=axes)
                inv_std = jax.lax.rsqrt(
                    jnp.mean(jnp.square(t32 - mean), axis=axes) + INIT_VARIANCE_FLOOR
                )
                value = inv_std if quantity == "scale" else -mean * inv_std
                return value.reshape(shape).astype(dtype)

            return init

        scale_init, bias_init = init_from_data("scale"), init_from_data("bias")
    else:
        scale_init, bias_init = nn.initializers.ones, nn.initializers.zeros
    # Named 'scale' so the optimizer's parameter groups treat g like a normalization gain.
    g = module.param("scale", scale_init, (features,), jnp.float32)
    y = t * g.astype(t.dtype)
    if use_bias:
        y = y + module.param("bias", bias_init, (features,), jnp.float32).astype(t.dtype)
    return y


def _conv_padding(padding, num_spatial: int):
    if isinstance(padding, str):
        return padding
    if isinstance(padding, int):
        return [(padding, padding)] * num_spatial
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


class WeightNormConv(nn.Module):
    """A conv with w = g v / ||v|| per output channel (kernel layout (*window, C_in, C_out))."""

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: str | int | Sequence = "SAME"
    use_bias: bool = True
    data_dependent_init: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_size = tuple(self.kernel_size)
        num_spatial = len(kernel_size)
        strides = (
            (self.strides,) * num_spatial if isinstance(self.strides, int) else tuple(self.strides)
        )
        v = self.param(
            "kernel",
            nn.initializers.normal(DIRECTION_STDDEV),
            (*kernel_size, x.shape[-1], self.features),
            jnp.float32,
        )
        spatial = "HWD"[:num_spatial]
        t = conv_general_dilated(
            x.astype(self.dtype),
            _direction_normalized(v).astype(self.dtype),
            window_strides=strides,
            padding=_conv_padding(self.padding, num_spatial),
            dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
        )
        return _gain_and_bias(self, t, self.use_bias, self.data_dependent_init)


class WeightNormDense(nn.Module):
    """A dense layer with w = g v / ||v|| per output unit (kernel (C_in, C_out))."""

    features: int
    use_bias: bool = True
    data_dependent_init: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        v = self.param(
            "kernel",
            nn.initializers.normal(DIRECTION_STDDEV),
            (x.shape[-1], self.features),
            jnp.float32,
        )
        t = jnp.dot(x.astype(self.dtype), _direction_normalized(v).astype(self.dtype))
        return _gain_and_bias(self, t, self.use_bias, self.data_dependent_init)


def weight_norm_conv(
    features: int,
    kernel_size: Sequence[int],
    *,
    strides=1,
    padding="SAME",
    use_bias: bool = True,
    role: str = "hidden",
    dtype: Dtype = jnp.float32,
    weight_init: str | None = None,
    name: str | None = None,
    data_dependent_init: bool = True,
) -> nn.Module:
    """LayerKit conv factory: every role alike (the logits layer too, as in the paper), and the
    kit's ``weight_init`` ignored: the directions start as the paper's (``DIRECTION_STDDEV``)."""
    del role, weight_init
    return WeightNormConv(
        features,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        data_dependent_init=data_dependent_init,
        dtype=dtype,
        name=name,
    )


def weight_norm_dense(
    features: int,
    *,
    use_bias: bool = True,
    role: str = "hidden",
    dtype: Dtype = jnp.float32,
    weight_init: str | None = None,
    name: str | None = None,
    data_dependent_init: bool = True,
) -> nn.Module:
    """LayerKit dense factory: as ``weight_norm_conv``."""
    del role, weight_init
    return WeightNormDense(
        features, use_bias=use_bias, data_dependent_init=data_dependent_init, dtype=dtype, name=name
    )


def require_plain_weight_layers(kit, kind: str) -> None:
    """Raises UsageError unless the kit's weight layers are still the plain ones, so that a
    normalization that brings its own (weight norm, Kalman norm) never silently drops others,
    such as quantized layers."""
    if not kit.has_plain_weight_layers:
        raise UsageError(
            f"{kind} brings its own conv and dense layers and cannot combine with "
            "other replaced weight layers (e.g. quantized ones)"
        )


class WeightNorm(Normalization):
    """The normalization slot of weight normalization (Salimans & Kingma 2016).

    The reparametrization itself is in the weight layers this module puts in the kit
    (``adapt_kit``): v ~ N(0, 0.05^2), w = g v / ||v|| per output unit, g and b from the
    data-dependent init (``data_dependent_init``, default true; see ``_gain_and_bias``).

    ``mean_only_batch_norm=False`` (default): nothing happens here, and the weight layers keep
    their bias. ``True``: the paper's mean-only batch norm, y = x - mu_B + beta in training and
    y = x - mu + beta in evaluation, mu the running mean (EMA, ``momentum`` on the old value,
    default 0.9); the weight layers before it then have no bias of their own, so the data-
    dependent init sets only g. Scale stays with g: there is no variance normalization.
    """

    mean_only_batch_norm: bool = False
    momentum: float = 0.9
    data_dependent_init: bool = True

    def __post_init__(self):
        for field in ("mean_only_batch_norm", "data_dependent_init"):
            if not isinstance(getattr(self, field), bool):
                raise UsageError(
                    f"{KIND}: {field} must be true or false, got {getattr(self, field)!r}"
                )
        check_fraction(KIND, "momentum", self.momentum)
        super().__post_init__()

    @property
    def adds_bias(self) -> bool:
        """Only mean-only batch norm adds a shift; otherwise the weight layers keep their bias."""
        return self.mean_only_batch_norm

    @nn.compact
    def normalize(self, x: jax.Array, train: bool) -> jax.Array:
        if not self.mean_only_batch_norm:
            return x.astype(self.dtype)
        momentum = option(self, "momentum", self.momentum)
        num_features = x.shape[-1]
        bias = self.param("bias", nn.initializers.zeros, (num_features,), jnp.float32)
        running_mean = self.variable(STATE, "mean", jnp.zeros, (num_features,), jnp.float32)
        x = x.astype(jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            check_enough_values(
                "mean-only batch norm",
                elements_per_channel(x, axes),
                f"a batch statistic of {x.shape} features",
            )
            mean = jnp.mean(x, axis=axes)
            if not self.is_initializing():
                running_mean.value = running_average(running_mean.value, mean, momentum)
        else:
            mean = running_mean.value
        return (x - mean + bias).astype(self.dtype)

    @nn.nowrap
    def adapt_kit(self, kit):
        require_plain_weight_layers(kit, KIND)
        return dataclasses.replace(
            kit,
            conv_factory=functools.partial(
                weight_norm_conv, data_dependent_init=self.data_dependent_init
            ),
            dense_factory=functools.partial(
                weight_norm_dense, data_dependent_init=self.data_dependent_init
            ),
        )

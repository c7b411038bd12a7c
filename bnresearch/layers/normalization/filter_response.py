"""Filter response normalization with its thresholded linear unit.

Reference: Singh & Krishnan, "Filter Response Normalization Layer: Eliminating Batch Dependence
in the Training of Deep Neural Networks", CVPR 2020, arXiv:1911.09737.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnresearch.errors import UsageError
from bnresearch.layers.activations import ReLU
from bnresearch.layers.normalization.base import (
    Normalization,
    check_epsilon,
    scale_and_bias,
    spatial_axes,
)
from bnresearch.layers.options import option
from bnresearch.layers.registry import module_class

KIND = "frn"


class ThresholdedLinearUnit(nn.Module):
    """TLU: z = max(y, tau) with a learned per-channel threshold tau, initialized to 0.

    Equal to relu(y - tau) + tau: a ReLU with a learned shift before and after it, which FRN
    needs because it does not subtract a mean. ``tau`` is a vector not named ``scale``, so it is
    in the ``bias`` parameter group.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        tau = self.param("tau", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
        return jnp.maximum(x, tau.astype(x.dtype))


class FilterResponseNorm(Normalization):
    """FRN (Singh & Krishnan 2019): y = gamma * x / sqrt(nu2 + eps) + beta, per example and
    channel, with nu2 the mean of x^2 over the spatial axes (H, W). No mean subtraction and no
    batch dependence: training and evaluation compute the same thing, at any batch size.
    ``epsilon`` defaults to 1e-6 (the paper's).

    The paper's FRN layer is FRN followed by its TLU and replaces the pair BN + ReLU. So with
    ``tlu=True`` (default) every activation of the model becomes a TLU with its own per-channel
    tau (``adapt_kit``), which requires the model's activation to be ``relu``, the activation TLU
    generalizes: ResNet blocks then apply a TLU after the residual addition as well, where they
    applied a ReLU. ``tlu=False`` keeps the model's own activation after the normalization.

    On (N, C) features (after a dense layer) nu2 is x^2 itself, so FRN computes
    x / sqrt(x^2 + eps), close to sign(x) unless ``epsilon`` is large; the paper raises this for
    1x1 activation maps and proposes a learned epsilon there, which is not implemented here.
    """

    epsilon: float = 1e-6
    scale_init: float = 1.0
    tlu: bool = True

    def __post_init__(self):
        check_epsilon(KIND, self.epsilon)
        if not isinstance(self.tlu, bool):
            raise UsageError(f"{KIND}: tlu must be true or false, got {self.tlu!r}")
        super().__post_init__()

    @nn.compact
    def normalize(self, x: jax.Array, train: bool) -> jax.Array:
        epsilon = option(self, "epsilon", self.epsilon)
        del train  # per-example statistics: training and evaluation are the same computation
        scale, bias = scale_and_bias(self, x.shape[-1])
        x = x.astype(jnp.float32)
        nu2 = jnp.mean(jnp.square(x), axis=spatial_axes(x), keepdims=True)
        y = x * jax.lax.rsqrt(nu2 + epsilon) * scale + bias
        return y.astype(self.dtype)

    @nn.nowrap
    def adapt_kit(self, kit):
        if not self.tlu:
            return kit
        if module_class(kit.activation_factory) is not ReLU:
            raise UsageError(
                f"{KIND}: its TLU replaces the model's relu (the paper's FRN layer), but the "
                f"activation is {module_class(kit.activation_factory).__name__}; use "
                "model.activation=relu or set model.norm_kwargs.tlu=false"
            )
        return dataclasses.replace(kit, activation_factory=ThresholdedLinearUnit)

"""Activation layers and their registry.

Activations are linen Modules, built from factories exactly like normalizations, so that learnable
ones (PReLU, learnable Swish) need nothing but a registry entry: models call
``activation(name=...)(x)`` once per use, which gives each use its own parameters. They compute
in the dtype of their input; learnable parameters are float32.

GELU has two forms that differ by up to about 1e-3: ``gelu_exact`` (x Phi(x), PyTorch's default)
and ``gelu_tanh`` (the tanh approximation, the default of ``jax.nn.gelu``). Neither is called
plain "gelu", so a config always says which one it compares.

A self-normalizing network (SELU) also needs LeCun-normal initialization and alpha-dropout; the
config switch ``model.self_normalizing`` sets both (see ``LayerKit``).

References:
  relu: Nair & Hinton, "Rectified Linear Units Improve Restricted Boltzmann Machines", ICML 2010.
  leaky_relu: Maas, Hannun & Ng, "Rectifier Nonlinearities Improve Neural Network Acoustic
    Models", ICML 2013 workshop.
  prelu: He, Zhang, Ren & Sun, "Delving Deep into Rectifiers", ICCV 2015, arXiv:1502.01852.
  elu: Clevert, Unterthiner & Hochreiter, "Fast and Accurate Deep Network Learning by Exponential
    Linear Units (ELUs)", ICLR 2016, arXiv:1511.07289.
  selu: Klambauer, Unterthiner, Mayr & Hochreiter, "Self-Normalizing Neural Networks", NeurIPS
    2017, arXiv:1706.02515.
  gelu: Hendrycks & Gimpel, "Gaussian Error Linear Units (GELUs)", 2016, arXiv:1606.08415.
  swish/silu: Ramachandran, Zoph & Le, "Searching for Activation Functions", 2017,
    arXiv:1710.05941; Elfwing, Uchibe & Doya, "Sigmoid-Weighted Linear Units for Neural Network
    Function Approximation in Reinforcement Learning", 2017, arXiv:1702.03118.
  hard_tanh: the activation of binarized networks, Hubara, Courbariaux, Soudry, El-Yaniv & Bengio,
    "Binarized Neural Networks", NeurIPS 2016, arXiv:1602.02830.
  mish: Misra, "Mish: A Self Regularized Non-Monotonic Activation Function", 2019,
    arXiv:1908.08681.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnresearch.layers.registry import ModuleFactory, lookup

# Klambauer et al. 2017, eq. 14: the fixed point (mean 0, variance 1) of SELU layers with
# normalized weights. Written out rather than taken from jax.nn.selu so the formula is visible.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


class ReLU(nn.Module):
    """max(x, 0)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(x)


class LeakyReLU(nn.Module):
    """x for x >= 0, negative_slope * x otherwise (Maas et al. use 0.01)."""

    negative_slope: float = 0.01

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.where(x >= 0, x, self.negative_slope * x)


class PReLU(nn.Module):
    """max(0, x) + a min(0, x) with a learnable slope ``a`` per channel (the last axis).

    He et al. 2015 start every slope at 0.25 (Flax's ``nn.PReLU`` has one scalar at 0.01). The
    slopes are vectors not named ``scale``, so they fall in the ``bias`` parameter group:
    ``optimizer.weight_decay_on=kernels`` leaves them undecayed, as the paper does.
    """

    slope_init: float = 0.25

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        slope = self.param(
            "slope", nn.initializers.constant(self.slope_init), (x.shape[-1],), jnp.float32
        )
        return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


class ELU(nn.Module):
    """x for x > 0, alpha * (exp(x) - 1) otherwise."""

    alpha: float = 1.0

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.elu(x, alpha=self.alpha)


class SELU(nn.Module):
    """scale * (x for x > 0, alpha * (exp(x) - 1) otherwise), with Klambauer et al.'s constants."""

    def __call__(self, x: jax.Array) -> jax.Array:
        negative = SELU_ALPHA * jnp.expm1(jnp.minimum(x, 0))  # min: no overflow for large x
        return (SELU_SCALE * jnp.where(x > 0, x, negative)).astype(x.dtype)


class GELUExact(nn.Module):
    """x Phi(x) = x (1 + erf(x / sqrt 2)) / 2, with Phi the standard normal CDF."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.gelu(x, approximate=False)


class GELUTanh(nn.Module):
    """Hendrycks & Gimpel's approximation x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.gelu(x, approximate=True)


class Swish(nn.Module):
    """x sigmoid(beta x); with ``learnable_beta`` beta is a learned scalar starting at ``beta``.

    One scalar per layer (Ramachandran et al. also consider a per-channel beta). It is a scalar,
    so it falls in the ``bias`` parameter group. ``silu`` is the fixed beta = 1 case.
    """

    beta: float = 1.0
    learnable_beta: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        beta = self.beta
        if self.learnable_beta:
            beta = self.param("beta", nn.initializers.constant(self.beta), (), jnp.float32)
            beta = beta.astype(x.dtype)
        return x * jax.nn.sigmoid(beta * x)


class Tanh(nn.Module):
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.tanh(x)


class Sigmoid(nn.Module):
    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(x)


class HardTanh(nn.Module):
    """clip(x, -1, 1): the activation before each binarization in binarized networks, whose
    derivative 1{|x| <= 1} is the clipped straight-through estimator of sign."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.clip(x, -1, 1)


class Mish(nn.Module):
    """x tanh(softplus(x)), softplus(x) = log(1 + e^x) (Misra 2019, eq. 1).

    ``jax.nn.softplus`` is log(1 + e^x) computed without overflow, so the value and its gradient
    stay finite for large |x| (the naive log(1 + exp(x)) has a NaN gradient once exp(x) is inf).
    """

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * jnp.tanh(jax.nn.softplus(x))


ACTIVATIONS: dict[str, ModuleFactory] = {
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "prelu": PReLU,
    "elu": ELU,
    "selu": SELU,
    "gelu_exact": GELUExact,
    "gelu_tanh": GELUTanh,
    "swish": Swish,
    "silu": functools.partial(Swish, beta=1.0, learnable_beta=False),
    "tanh": Tanh,
    "sigmoid": Sigmoid,
    "hard_tanh": HardTanh,
    "mish": Mish,
}


def get_activation(name: str, **options) -> ModuleFactory:
    """A factory for activation `name` with `options` bound, called as ``activation(name=...)``.

    Unknown names and options, and invalid option values, raise UsageError here.
    """
    factory = lookup("activation", ACTIVATIONS, name, options)
    factory(parent=None)  # a detached instance, built only so that bad option values raise now
    return factory

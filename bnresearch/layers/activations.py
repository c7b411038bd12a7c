"""Activation layers and their registry.

Activations are linen Modules, built from factories exactly like normalizations, so that learnable
ones (PReLU, learnable Swish) need nothing but a registry entry: models call
``activation(name=...)(x)`` once per use, which gives each use its own parameters. They compute
in the dtype of their input.

References:
  relu: Nair & Hinton, "Rectified Linear Units Improve Restricted Boltzmann Machines", ICML 2010.
  elu: Clevert, Unterthiner & Hochreiter, "Fast and Accurate Deep Network Learning by Exponential
    Linear Units (ELUs)", ICLR 2016, arXiv:1511.07289.
"""
import jax
import flax.linen as nn

from bnresearch.layers.registry import ModuleFactory, lookup


class ReLU(nn.Module):
    """max(x, 0)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(x)


class ELU(nn.Module):
    """x for x > 0, alpha * (exp(x) - 1) otherwise."""
    alpha: float = 1.0

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.elu(x, alpha=self.alpha)


ACTIVATIONS: dict[str, ModuleFactory] = {
    'relu': ReLU,
    'elu': ELU,
}


def get_activation(name: str, **options) -> ModuleFactory:
    """A factory for activation `name` with `options` bound, called as ``activation(name=...)``.

    Unknown names and options, and invalid option values, raise UsageError here.
    """
    factory = lookup('activation', ACTIVATIONS, name, options)
    factory(parent=None)  # a detached instance, built only so that bad option values raise now
    return factory

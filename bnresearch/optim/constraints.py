"""Constraints on parameters, applied as the last transform of the optimizer chain.

BinaryConnect (Courbariaux et al. 2015, arXiv:1511.00363), BNN (Hubara et al. 2016,
arXiv:1602.02830), XNOR-Net and QNN clip the real-valued latent weights of quantized layers to
[-1, 1] after each update: outside that window the weight STEs pass no gradient, so a latent
weight that drifted further would stop learning, and its sign could never flip back. Quantized
layers name such weights ``latent_kernel`` (``bnresearch/layers/quantization.py``); the transform
here clips exactly the leaves of that name and passes every other update through untouched, so
it is a no-op for models without them.
"""

import jax
import jax.numpy as jnp
import optax

from bnresearch.layers.variables import LATENT_KERNEL


def _is_latent(path) -> bool:
    return bool(path) and getattr(path[-1], "key", None) == LATENT_KERNEL


def clip_latent_weights(bound: float = 1.0) -> optax.GradientTransformation:
    """Rewrites the update of every ``latent_kernel`` leaf so that the updated parameter is
    clip(param + update, -bound, bound); other leaves keep their update. Needs the params.

    Written as the update clip(p + u) - p, which optax adds back to p. In floating point
    p + (c - p) need not equal c, but for |p| <= bound it never leaves [-bound, bound] (the error
    of c - p is at most half an ulp of a number below 2 bound, and the sum rounds to nearest);
    quantized layers start their latent weights inside the window, so they stay inside. The
    tests check this on many random values.
    """

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("clip_latent_weights needs the params: call update(..., params)")

        def clip(path, update, param):
            if not _is_latent(path):
                return update
            return jnp.clip(param + update, -bound, bound) - param

        return jax.tree_util.tree_map_with_path(clip, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)

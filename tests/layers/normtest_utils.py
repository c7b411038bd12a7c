"""Helpers for the normalization tests: inputs, non-trivial affine parameters, NumPy moments."""

import jax
import numpy as np

from bnresearch.layers.variables import STATE

CONV_SHAPE = (6, 4, 5, 8)  # (N, H, W, C)
DENSE_SHAPE = (6, 8)  # (N, C)

# Options some variants need to run on the tests' small shapes.
SMALL_OPTIONS = {
    "group": {"num_groups": 4},
    "ghost_batch": {"virtual_batch_size": 2},
}


def random_input(shape, seed=0):
    rng = np.random.default_rng(seed)
    # An offset and a per-channel spread, so that normalizing actually changes something.
    return (3.0 + rng.normal(size=shape) * rng.uniform(0.5, 4.0, size=shape[-1])).astype(np.float32)


def init_with_random_affine(module, x, seed=1):
    """Variables of `module` with a non-trivial scale and bias, so the tests check they apply."""
    variables = dict(module.init(jax.random.key(0), x, train=True))
    rng = np.random.default_rng(seed)
    channels = x.shape[-1]
    params = dict(variables["params"])
    params["scale"] = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    params["bias"] = rng.normal(size=channels).astype(np.float32)
    variables["params"] = params
    return variables


def moments(x, axes):
    """Mean and biased variance over `axes` in float64, axes kept."""
    x = np.asarray(x, np.float64)
    return x.mean(axes, keepdims=True), x.var(axes, keepdims=True)


def state_of(variables):
    """The persistent collections of a variables dict (what a train state keeps)."""
    return {key: value for key, value in variables.items() if key in ("params", STATE)}

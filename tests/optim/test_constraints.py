"""The latent-weight clip: exactly the ``latent_kernel`` leaves end up in [-1, 1], every other
update passes untouched, and it is the last step of the optimizer chain."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bnresearch.config.defaults import base_config
from bnresearch.optim.constraints import LATENT_KERNEL, clip_latent_weights
from bnresearch.optim.optimizers import make_optimizer

RNG = np.random.default_rng(0)


def tree():
    return {
        "quantized": {
            LATENT_KERNEL: jnp.asarray(RNG.uniform(-1, 1, (3, 4)), jnp.float32),
            "bias": jnp.asarray(RNG.normal(size=4), jnp.float32),
        },
        "plain": {"kernel": jnp.asarray(RNG.normal(size=(4, 2)), jnp.float32)},
    }


def test_clips_exactly_the_latent_weights():
    params = tree()
    updates = jax.tree.map(lambda p: jnp.asarray(RNG.normal(size=p.shape) * 2, jnp.float32), params)
    transform = clip_latent_weights()
    clipped, _ = transform.update(updates, transform.init(params), params)
    new = optax.apply_updates(params, clipped)
    unclipped = optax.apply_updates(params, updates)
    latent = new["quantized"][LATENT_KERNEL]
    assert np.abs(np.asarray(unclipped["quantized"][LATENT_KERNEL])).max() > 1  # it had work
    assert np.abs(np.asarray(latent)).max() <= 1
    np.testing.assert_allclose(
        latent, np.clip(unclipped["quantized"][LATENT_KERNEL], -1, 1), atol=1.2e-7
    )
    # every other leaf: bitwise the plain update
    for path in (("quantized", "bias"), ("plain", "kernel")):
        np.testing.assert_array_equal(new[path[0]][path[1]], unclipped[path[0]][path[1]])


def test_latent_weights_inside_the_window_stay_inside_whatever_the_update():
    # p + (clip(p + u) - p) is computed in float32: check it never leaves [-1, 1] over a million
    # draws of p in [-1, 1] (with the ends) and updates of every size.
    p = np.concatenate([RNG.uniform(-1, 1, 10**6), [-1.0, 1.0, np.nextafter(1.0, 0)]])
    u = RNG.normal(size=p.size) * RNG.choice([1e-6, 1e-2, 1.0, 10.0], p.size)
    params = {LATENT_KERNEL: jnp.asarray(p, jnp.float32)}
    updates = {LATENT_KERNEL: jnp.asarray(u, jnp.float32)}
    clipped, _ = clip_latent_weights().update(updates, optax.EmptyState(), params)
    new = np.asarray(optax.apply_updates(params, clipped)[LATENT_KERNEL])
    assert new.min() >= -1 and new.max() <= 1


def test_make_optimizer_ends_with_the_clip():
    config = base_config().optimizer
    config.update({"name": "sgd", "weight_decay": 0.0})
    optimizer = make_optimizer(config, lambda step: 1.0)
    params = tree()
    grads = jax.tree.map(lambda p: jnp.full(p.shape, -5.0), params)  # a step of +5 everywhere
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    new = optax.apply_updates(params, updates)
    latent = np.asarray(new["quantized"][LATENT_KERNEL])
    assert latent.max() <= 1.0
    np.testing.assert_allclose(latent, 1.0, atol=1.2e-7)  # p + (1 - p): within an ulp of 1
    np.testing.assert_allclose(new["plain"]["kernel"], params["plain"]["kernel"] + 5, rtol=1e-6)

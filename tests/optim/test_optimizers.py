"""Two updates of each optimizer against the update rule written out in NumPy."""
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from bnresearch.errors import UsageError
from bnresearch.optim.optimizers import make_optimizer

W0 = np.array([1.0, -2.0, 0.5])
GRADS = [np.array([0.3, -0.1, 0.2]), np.array([-0.4, 0.5, 0.1])]
LR = 0.1


def opt_config(name, weight_decay=0.0, grad_clip_norm=0.0):
    return ml_collections.ConfigDict(dict(name=name, momentum=0.9, b1=0.9, b2=0.999, eps=1e-8,
                                          weight_decay=weight_decay, weight_decay_on="all",
                                          lr_multipliers={}, grad_clip_norm=grad_clip_norm))


def run_two_steps(config):
    optimizer = make_optimizer(config, lambda step: LR)
    params = jnp.asarray(W0)
    state = optimizer.init(params)
    for grad in GRADS:
        updates, state = optimizer.update(jnp.asarray(grad), state, params)
        params = optax.apply_updates(params, updates)
    return np.asarray(params)


def reference(name, weight_decay=0.0):
    w, v, m, s = W0.copy(), np.zeros(3), np.zeros(3), np.zeros(3)
    for t, g in enumerate(GRADS, start=1):
        if name != "adamw":
            g = g + weight_decay * w
        if name == "sgd":
            w = w - LR * g
        elif name == "momentum":
            v = g + 0.9 * v
            w = w - LR * v
        elif name == "nesterov":
            v = g + 0.9 * v
            w = w - LR * (g + 0.9 * v)
        else:  # adam, adamw
            m = 0.9 * m + 0.1 * g
            s = 0.999 * s + 0.001 * g * g
            step = (m / (1 - 0.9 ** t)) / (np.sqrt(s / (1 - 0.999 ** t)) + 1e-8)
            if name == "adamw":
                step = step + weight_decay * w
            w = w - LR * step
    return w


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "adamw"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_two_updates_match_the_rule(name, weight_decay):
    np.testing.assert_allclose(run_two_steps(opt_config(name, weight_decay)),
                               reference(name, weight_decay), rtol=1e-5)


def test_gradient_clipping_bounds_the_global_norm():
    # With clipping at 0.01 and plain SGD, each step moves the weights by lr * 0.01 in norm.
    optimizer = make_optimizer(opt_config("sgd", grad_clip_norm=0.01), lambda step: LR)
    params = jnp.asarray(W0)
    updates, _ = optimizer.update(jnp.asarray(GRADS[0]), optimizer.init(params), params)
    assert np.linalg.norm(np.asarray(updates)) == pytest.approx(LR * 0.01, rel=1e-5)


def test_unknown_optimizer():
    with pytest.raises(UsageError, match="valid: sgd, momentum, nesterov, adam, adamw"):
        make_optimizer(opt_config("adamax"), lambda step: LR)

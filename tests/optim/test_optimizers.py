"""Two updates of every optimizer against its update rule written out in NumPy, each weight-decay
style, the weight-decay and trust-ratio masks, clipping and the errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnresearch.config.defaults import base_config
from bnresearch.errors import UsageError
from bnresearch.optim.optimizers import OPTIMIZERS, make_optimizer

LR = 0.1
MOMENTUM, B1, B2, EPS, RHO, TRUST = 0.9, 0.9, 0.999, 1e-8, 0.9, 0.001
# A kernel, a bias and a normalization gain: one leaf of each parameter group.
W0 = {
    "dense": {"kernel": np.array([[1.0, -2.0], [0.5, 0.3]]), "bias": np.array([0.2, -0.1])},
    "norm": {"scale": np.array([1.5, 0.7])},
}
GRADS = [
    {
        "dense": {"kernel": np.array([[0.3, -0.1], [0.2, 0.05]]), "bias": np.array([0.1, 0.4])},
        "norm": {"scale": np.array([-0.2, 0.3])},
    },
    {
        "dense": {"kernel": np.array([[-0.4, 0.5], [0.1, -0.2]]), "bias": np.array([-0.3, 0.2])},
        "norm": {"scale": np.array([0.25, -0.1])},
    },
]


def opt_config(name, **fields):
    config = base_config().optimizer
    config.update(
        name=name,
        momentum=MOMENTUM,
        b1=B1,
        b2=B2,
        eps=EPS,
        rho=RHO,
        initial_accumulator=0.0,
        trust_coefficient=TRUST,
        weight_decay=0.0,
    )
    config.update(fields)
    return config


def run_two_steps(config):
    """The total change of every leaf after two updates (the sum of the updates, in float64, so
    small steps are not lost to float32 rounding of the weights)."""
    optimizer = make_optimizer(config, lambda step: LR)
    params = jax.tree.map(jnp.asarray, W0)
    state = optimizer.init(params)
    total = jax.tree.map(np.zeros_like, W0)
    for grad in GRADS:
        updates, state = optimizer.update(jax.tree.map(jnp.asarray, grad), state, params)
        params = optax.apply_updates(params, updates)
        total = jax.tree.map(lambda t, u: t + np.asarray(u, np.float64), total, updates)
    return total


def numpy_change(name, w0, grads, *, weight_decay=0.0, style="coupled", trust=True):
    """One leaf's total change under the written-out rule (per-array trust ratio)."""
    w, v, m, s = w0.copy(), np.zeros_like(w0), np.zeros_like(w0), np.zeros_like(w0)
    for t, g in enumerate(grads, start=1):
        decay = weight_decay * w
        if style == "coupled":
            g = g + decay
        if name in ("sgd", "lars"):
            d = g
        elif name == "momentum":
            v = g + MOMENTUM * v
            d = v
        elif name == "nesterov":
            v = g + MOMENTUM * v
            d = g + MOMENTUM * v
        elif name == "adagrad":
            s = s + g * g
            d = g / np.sqrt(s + EPS)
        elif name == "rmsprop":
            s = RHO * s + (1 - RHO) * g * g
            d = g / np.sqrt(s + EPS)
        else:  # adam, adamw, lamb
            m = B1 * m + (1 - B1) * g
            s = B2 * s + (1 - B2) * g * g
            d = (m / (1 - B1**t)) / (np.sqrt(s / (1 - B2**t)) + EPS)
        if style == "decoupled":
            d = d + decay
        if name in ("lars", "lamb") and trust:
            coefficient = TRUST if name == "lars" else 1.0
            d = d * coefficient * np.linalg.norm(w) / np.linalg.norm(d)
        step = LR * d
        if name == "lars":  # momentum on the lr-scaled step
            v = step + MOMENTUM * v
            step = v
        w = w - step
    return w - w0


def leaves(tree):
    return jax.tree_util.tree_leaves_with_path(tree)


def group_of(path):
    return (
        "kernel" if path[-1].key == "kernel" else ("scale" if path[-1].key == "scale" else "bias")
    )


CASES = [
    (name, style, weight_decay)
    for name, rule in OPTIMIZERS.items()
    for style in rule.decay_styles
    for weight_decay in (0.0, 0.01)
]


@pytest.mark.parametrize("name, style, weight_decay", CASES)
def test_two_updates_match_the_rule(name, style, weight_decay):
    changes = run_two_steps(opt_config(name, weight_decay=weight_decay, weight_decay_style=style))
    grads = [dict(leaves(g)) for g in GRADS]
    for path, change in leaves(changes):
        w0 = dict(leaves(W0))[path]
        expected = numpy_change(
            name, w0, [g[path] for g in grads], weight_decay=weight_decay, style=style
        )
        np.testing.assert_allclose(change, expected, rtol=2e-5, atol=1e-9)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_auto_style_is_the_optimizer_own(name):
    auto = run_two_steps(opt_config(name, weight_decay=0.01))
    own = run_two_steps(
        opt_config(name, weight_decay=0.01, weight_decay_style=OPTIMIZERS[name].decay_styles[0])
    )
    jax.tree.map(np.testing.assert_array_equal, auto, own)


def test_decoupled_decay_stays_out_of_the_momentum():
    # SGDW: the decay is not accumulated by the momentum buffer, so the two styles differ.
    coupled = run_two_steps(opt_config("momentum", weight_decay=0.1, weight_decay_style="coupled"))
    decoupled = run_two_steps(
        opt_config("momentum", weight_decay=0.1, weight_decay_style="decoupled")
    )
    assert not np.allclose(coupled["dense"]["kernel"], decoupled["dense"]["kernel"])


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_kernel_masks_exempt_norm_parameters_and_biases(name):
    # Weight decay and the trust ratio on kernels only: the gain and the bias take the plain
    # optimizer step (LARS: momentum SGD, LAMB: Adam) without decay.
    changes = run_two_steps(
        opt_config(name, weight_decay=0.01, weight_decay_on="kernels", trust_ratio_on="kernels")
    )
    grads = [dict(leaves(g)) for g in GRADS]
    style = OPTIMIZERS[name].decay_styles[0]
    for path, change in leaves(changes):
        on_kernel = group_of(path) == "kernel"
        expected = numpy_change(
            name,
            dict(leaves(W0))[path],
            [g[path] for g in grads],
            weight_decay=0.01 if on_kernel else 0.0,
            style=style,
            trust=on_kernel,
        )
        np.testing.assert_allclose(change, expected, rtol=2e-5, atol=1e-9)
    # And the trust ratio really changed the kernel's step (LARS: by about 1000x).
    plain = numpy_change(
        name,
        W0["dense"]["kernel"],
        [g["dense"]["kernel"] for g in GRADS],
        weight_decay=0.01,
        style=style,
        trust=False,
    )
    assert not np.allclose(changes["dense"]["kernel"], plain, rtol=0.05)


def test_gradient_clipping_bounds_the_global_norm():
    # With clipping at 0.01 and plain SGD, a step moves the weights by lr * 0.01 in norm.
    optimizer = make_optimizer(opt_config("sgd", grad_clip_norm=0.01), lambda step: LR)
    params = jax.tree.map(jnp.asarray, W0)
    updates, _ = optimizer.update(
        jax.tree.map(jnp.asarray, GRADS[0]), optimizer.init(params), params
    )
    norm = np.sqrt(sum(np.sum(np.square(u)) for u in jax.tree.leaves(updates)))
    assert norm == pytest.approx(LR * 0.01, rel=1e-5)


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"name": "adamax"},
            "valid: sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw, lars, lamb",
        ),
        ({"name": "adamw", "weight_decay_style": "coupled"}, "valid for adamw: auto, decoupled"),
        ({"name": "lars", "weight_decay_style": "decoupled"}, "valid for lars: auto, coupled"),
        ({"weight_decay_style": "l2"}, "valid: auto, coupled, decoupled"),
        (
            {"trust_ratio_on": "norms"},
            "unknown optimizer.trust_ratio_on 'norms'; valid: all, kernels",
        ),
        ({"accumulation_steps": 0}, "accumulation_steps=0 must be a positive whole number"),
    ],
)
def test_bad_settings_are_refused(fields, message):
    config = opt_config(fields.pop("name", "momentum"), **fields)
    with pytest.raises(UsageError, match=message):
        make_optimizer(config, lambda step: LR)

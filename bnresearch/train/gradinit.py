"""GradInit: the initial weights' scales, learned before training (Zhu, Ni, Xu, Kong, Huang &
Goldstein, "GradInit: Learning to Initialize Neural Networks for Stable and Efficient Training",
NeurIPS 2021, arXiv:2102.08098, their Algorithm 1).

Every parameter tensor theta_i of the initialized network gets a scalar alpha_i (from 1), so the
network is theta(alpha) = (alpha_i theta_i)_i. For `iterations` steps, on two consecutive
batches S and S' of the training stream, with g = grad L(S; theta(alpha)):

    ||g||_p > gamma:  alpha <- alpha - Adam_tau(grad_alpha ||g||_p)                 (constraint)
    otherwise:        alpha <- alpha - Adam_tau(grad_alpha L(S'; theta(alpha) - eta g))

then alpha_i <- max(alpha_i, min_scale): the scales are tuned so that one SGD step of size eta
lowers the loss on a fresh batch the most while the first gradient's norm stays at most gamma.
At the end the scales are folded into the weights (theta_i <- alpha_i theta_i) and the optimizer
state is made afresh for them, so training starts from an ordinary state. Tensors that start at
zero (biases, shifts) stay zero, their scale moot. L is the training objective in training mode
(batch statistics; the normalization state stays as initialized); eta g is plain SGD's step
(also the first step of SGD with momentum).
"""

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding, PartitionSpec

from bnresearch.errors import UsageError
from bnresearch.parallel.mesh import global_batch
from bnresearch.train import steps
from bnresearch.train.canonical_convolutions import canonical_convolutions
from bnresearch.train.rundir import MetricsLog
from bnresearch.train.state import TrainState

log = logging.getLogger(__name__)

INIT_METHODS = ("default", "gradinit")


@dataclasses.dataclass(frozen=True)
class GradInitSettings:
    """The `gradinit` config block (defaults and ranges: config/defaults.py, ranges.py)."""

    iterations: int  # tuning steps, each on two batches of the training stream
    lr: float  # tau: Adam's lr on the scales
    inner_lr: float  # eta: the size of the SGD step whose outcome is optimized
    gamma: float  # the bound on the first gradient's norm
    norm_order: int  # p of ||g||_p: 1 or 2
    min_scale: float  # the scales' lower bound

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "GradInitSettings":
        return cls(**{field.name: config[field.name] for field in dataclasses.fields(cls)})


def scaled(scales, params):
    """theta(alpha): each tensor times its scale, in the tensor's dtype."""
    return jax.tree.map(lambda scale, p: (scale * p).astype(p.dtype), scales, params)


def gradient_norm(gradient, order: int) -> jax.Array:
    """||g||_p over all tensors together, p = 1 or 2."""
    leaves = [leaf.astype(jnp.float32) for leaf in jax.tree.leaves(gradient)]
    if order == 1:
        return sum(jnp.sum(jnp.abs(leaf)) for leaf in leaves)
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in leaves))


def init_scales(params):
    return jax.tree.map(lambda _: jnp.ones((), jnp.float32), params)


def scale_optimizer(settings: GradInitSettings) -> optax.GradientTransformation:
    return optax.adam(settings.lr)


def scale_gradient(
    scales, params, loss_fn, batch, next_batch, settings: GradInitSettings, on_cpu: bool = False
):
    """The gradient GradInit steps the scales along, with the loss and ||g||_p at them and
    whether the constraint was violated (the gradient is then that of ||g||_p).

    `loss_fn(params, batch)` is the objective; `params` the initial ones (never changed).

    Both objectives are functions of theta(alpha) = (alpha_i theta_i) through g = grad L(S; .),
    so their derivative in alpha_i is an inner product with theta_i, and the second derivative
    they need is one Hessian-vector product H v, H the Hessian of L(S; .) at theta(alpha):

        d||g||_p / d alpha_i               = <theta_i, (H n)_i>,            n = d||g||_p / dg
        d L(S'; theta - eta g) / d alpha_i = <theta_i, u_i - eta (H u)_i>,  u = grad L(S'; .)

    H v is a forward-mode derivative of the gradient (`jax.jvp`), whose convolutions are those of
    a backward pass; differentiating the gradient in reverse instead costs ~3 times as much on
    XLA's CPU backend (2.7 s against 0.23 s for a train step of the why_bn study's 15-conv
    network). `on_cpu`: u is computed in a `lax.cond` (not when the constraint is violated),
    where XLA's CPU backend runs convolutions in JAX's order slowly unless brought to its own
    (``canonical_convolutions.py``).
    """
    start = scaled(scales, params)
    gradient_of = jax.grad(loss_fn)
    loss, gradient = jax.value_and_grad(loss_fn)(start, batch)
    norm = gradient_norm(gradient, settings.norm_order)
    constrained = norm > settings.gamma

    def outcome_gradient(_):
        stepped = jax.tree.map(lambda p, g: p - settings.inner_lr * g, start, gradient)
        return gradient_of(stepped, next_batch)

    if on_cpu:
        outcome_gradient = canonical_convolutions(outcome_gradient)
    # u, or zeros where the constraint's branch needs no step.
    outcome = jax.lax.cond(
        constrained, lambda _: jax.tree.map(jnp.zeros_like, gradient), outcome_gradient, None
    )
    norm_direction = jax.grad(lambda g: gradient_norm(g, settings.norm_order))(gradient)
    vector = jax.tree.map(
        lambda n, u: jnp.where(constrained, n, -settings.inner_lr * u), norm_direction, outcome
    )
    _, hessian_vector = jax.jvp(lambda p: gradient_of(p, batch), (start,), (vector,))
    direction = jax.tree.map(
        lambda p, u, hv: jnp.vdot(p.astype(jnp.float32), (u + hv).astype(jnp.float32)),
        params,
        outcome,
        hessian_vector,
    )
    return direction, loss, norm, constrained


def iteration(
    scales,
    opt_state,
    params,
    loss_fn,
    batch,
    next_batch,
    settings: GradInitSettings,
    on_cpu: bool = False,
):
    """One GradInit step: the new scales and Adam state, and the scalars to log."""
    direction, loss, norm, constrained = scale_gradient(
        scales, params, loss_fn, batch, next_batch, settings, on_cpu
    )
    updates, opt_state = scale_optimizer(settings).update(direction, opt_state, scales)
    scales = jax.tree.map(
        lambda s: jnp.maximum(s, settings.min_scale), optax.apply_updates(scales, updates)
    )
    scalars = {
        "gradinit/loss": loss,
        "gradinit/gradient_norm": norm,
        "gradinit/constrained": constrained.astype(jnp.float32),
    }
    return scales, opt_state, scalars


def check_gradinit_config(config: ml_collections.ConfigDict) -> None:
    """Raises a one-line UsageError for a bad `model.init_method`, or GradInit where it cannot
    run (the ranges of the `gradinit` block's numbers: ``config/ranges.py``)."""
    method = config.model.init_method
    if method not in INIT_METHODS:
        raise UsageError(f"unknown model.init_method {method!r}; valid: {', '.join(INIT_METHODS)}")
    if method == "gradinit" and config.init_from.workdir:
        raise UsageError(
            "model.init_method=gradinit learns a fresh initialization, so it cannot start from "
            f"init_from.workdir={config.init_from.workdir!r}; use model.init_method=default"
        )


def fold(state: TrainState, scales, optimizer: optax.GradientTransformation) -> TrainState:
    """The state training starts from: the scales folded into the parameters, the optimizer's
    state made for them (as at any initialization)."""
    params = scaled(scales, state.params)
    return state.replace(params=params, opt_state=optimizer.init(params))


# Folded into the run's base key for GradInit's random draws (dropout), apart from the train
# steps', which fold in the step number.
_STREAM = 0x67726164


def tune(setup, state: TrainState, train_iterator) -> TrainState:
    """GradInit on a freshly initialized `state`, on the first 2 x iterations batches of
    `train_iterator` (an iterator of its own: the training stream is untouched); returns the
    folded state and logs every iteration to metrics.jsonl at step 0 (replacing any records an
    interrupted launch left: without a checkpoint a run starts over, and so does its tuning,
    to the same scales)."""
    settings = GradInitSettings.from_config(setup.config.gradinit)

    def one_iteration(scales, opt_state, state, batch, next_batch, index):
        rng = jax.random.fold_in(jax.random.fold_in(state.rng, _STREAM), index)
        loss_fn = lambda params, batch: steps.objective(
            params,
            state.batch_stats,
            batch,
            rng,
            model=setup.model,
            label_smoothing=setup.config.label_smoothing,
        )[0]
        return iteration(
            scales, opt_state, state.params, loss_fn, batch, next_batch, settings, setup.on_cpu
        )

    # The scales, their Adam state and the logged scalars live replicated on the mesh from the
    # first iteration on: arrays made on one device would be laid out otherwise at the first
    # call than at the next, and the iteration compiled twice.
    replicated = NamedSharding(setup.mesh, PartitionSpec())
    step = jax.jit(one_iteration, out_shardings=replicated, compiler_options=setup.compiler_options)
    scales = jax.device_put(init_scales(state.params), replicated)
    opt_state = jax.device_put(scale_optimizer(settings).init(scales), replicated)
    records = []
    for index in range(settings.iterations):
        batch, next_batch = (global_batch(next(train_iterator), setup.mesh) for _ in range(2))
        scales, opt_state, scalars = step(scales, opt_state, state, batch, next_batch, index)
        records.append(scalars)
    metrics_log = MetricsLog(setup.rundir, resume_step=-1)
    try:
        for index, scalars in enumerate(jax.device_get(records)):
            metrics_log.write(0, {"gradinit/iteration": index, **scalars})
    finally:
        metrics_log.close()
    folded = jax.jit(
        functools.partial(fold, optimizer=setup.optimizer),
        out_shardings=setup.layout.sharding,
        compiler_options=setup.compiler_options,
    )(state, scales)
    last = jax.device_get(records[-1])
    log.info(
        "GradInit: %d iterations, last loss %.4f, gradient norm %.4f",
        settings.iterations,
        last["gradinit/loss"],
        last["gradinit/gradient_norm"],
    )
    return folded

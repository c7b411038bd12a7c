"""Internal covariate shift as Santurkar et al. define it (arXiv:1805.11604, section 2.2, their
Definition 2.1): how much a layer's gradient changes because the layers before it moved.

For layer i, with all parameters W at step t and W' after the step's update, on the same batch:

    G_i  = grad_{W_i} L(W_1,  ..., W_{i-1},  W_i, ..., W_k)
    G'_i = grad_{W_i} L(W'_1, ..., W'_{i-1}, W_i, ..., W_k)

and the shift of layer i is ||G_i - G'_i|| (l2) and cos(G_i, G'_i). The first layer has no
earlier one (G'_1 = G_1), so the summary over layers leaves it out.

A "layer" here is one top-level entry of the parameters (a conv, a dense, a normalization's
gain and shift, or a whole residual block of the models that group their layers into blocks),
ordered by where the forward pass first calls it (`forward_order`): parameter dicts lose that
order (JAX sorts dict keys), so it is read off the model.
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from bnresearch.config.durations import parse_duration
from bnresearch.errors import UsageError
from bnresearch.measure.landscape import tree_norm


def forward_order(apply_fn, *args) -> tuple[str, ...]:
    """The top-level module names in the order `apply_fn(*args)` (a linen `apply`, maybe
    wrapped) first calls them; traced abstractly, so `args` may be ShapeDtypeStructs."""
    called = []

    def record(next_fun, fun_args, fun_kwargs, context):
        path = context.module.scope.path if context.module.scope is not None else ()
        if path and path[0] not in called:
            called.append(path[0])
        return next_fun(*fun_args, **fun_kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(apply_fn, *args)
    return tuple(called)


def _dot(a, b) -> jax.Array:
    return sum(
        jnp.sum(x.astype(jnp.float32) * y.astype(jnp.float32))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def shift(gradient_fn, params: dict, updated: dict, layers: tuple[str, ...]):
    """(||G_i - G'_i||, cos(G_i, G'_i)) of each of `layers`, two arrays in their order.

    `gradient_fn(params)` is the gradient (a dict like `params`) on the fixed batch; `updated`
    the parameters after the update; `layers` every top-level key of `params`, first called
    first. The k shifted gradients are computed one after another (`lax.map`): one compiled
    gradient, the memory of one. A layer whose gradient is zero has no direction: its cosine is
    NaN, not a made-up value.
    """
    if sorted(layers) != sorted(params):
        raise ValueError(f"layers {layers} are not the parameters' {tuple(params)}")
    gradient = gradient_fn(params)

    def layer_shift(i):
        # Layers before i at their updated values, i and after at the current ones.
        mixed = {
            name: jax.tree.map(
                lambda old, new, j=j: jnp.where(j < i, new, old), params[name], updated[name]
            )
            for j, name in enumerate(layers)
        }
        shifted = gradient_fn(mixed)
        # Every layer's values, indexed by the traced i: k small reductions, not k programs.
        distances = jnp.stack(
            [tree_norm(jax.tree.map(jnp.subtract, gradient[n], shifted[n])) for n in layers]
        )
        dots = jnp.stack([_dot(gradient[n], shifted[n]) for n in layers])
        norms = jnp.stack([tree_norm(gradient[n]) * tree_norm(shifted[n]) for n in layers])
        return distances[i], dots[i] / norms[i]

    return jax.lax.map(layer_shift, jnp.arange(len(layers)))


def layer_label(index: int, name: str) -> str:
    return f"{index:02d}_{name}"


def summary(layers: tuple[str, ...], distances, cosines) -> dict[str, jax.Array]:
    """The scalars logged: `ics/<NN>_<layer>/l2` and `ics/<NN>_<layer>/cosine` per layer, NN its
    place in the forward order (metrics are stored with sorted keys, so the order must be in the
    name: the report draws the layers in it), and their means over the layers that have an
    earlier one (`ics/mean_l2`, `ics/mean_cosine`)."""
    scalars = {}
    for index, name in enumerate(layers):
        scalars[f"ics/{layer_label(index, name)}/l2"] = distances[index]
        scalars[f"ics/{layer_label(index, name)}/cosine"] = cosines[index]
    if len(layers) > 1:
        scalars["ics/mean_l2"] = jnp.mean(distances[1:])
        scalars["ics/mean_cosine"] = jnp.mean(cosines[1:])
    return scalars


def check_covariate_shift_config(
    config: ml_collections.ConfigDict, accumulation_steps: int
) -> None:
    """Raises a one-line UsageError for a bad `covariate_shift` block."""
    if not isinstance(config.enabled, bool):
        raise UsageError(f"covariate_shift.enabled={config.enabled!r} must be true or false")
    parse_duration(config.every)
    if config.enabled and accumulation_steps != 1:
        raise UsageError(
            "covariate_shift.enabled=true needs optimizer.accumulation_steps=1: the shift is "
            f"that of one batch's update, not of {accumulation_steps} micro-batches'"
        )

"""Loss-landscape probes along the gradient direction (Santurkar, Tsipras, Ilyas & Madry, "How Does
Batch Normalization Help Optimization?", NeurIPS 2018, arXiv:1805.11604, section 3.1).

At the current parameters theta, with g = grad L(theta) on the step's batch, and for each step
size eta of a grid, on the same batch (same examples, same random draws):

    loss range                max_eta L(theta - eta g) - min_eta L(theta - eta g)
    gradient predictiveness   max_eta ||g - grad L(theta - eta g)||
    effective beta-smoothness max_eta ||g - grad L(theta - eta g)|| / ||eta g||

The last is the largest gradient Lipschitz constant seen along the step. For a quadratic loss
L = 1/2 theta^T H theta + b^T theta the gradient moves by eta H g, so beta = ||H g|| / ||g||:
the Hessian's curvature g^T H g / g^T g when g is one of its eigenvectors, and at most its
largest eigenvalue. L is the training objective (cross-entropy plus the layers' auxiliary
losses), in training mode: a batch-normalized network is normalized with the batch's own
statistics at every probed point, as the paper measures it. Weight decay is the optimizer's and
not part of L.
"""

import jax
import jax.numpy as jnp
import ml_collections

from bnresearch.config.durations import parse_duration
from bnresearch.errors import UsageError


def tree_norm(tree) -> jax.Array:
    """The l2 norm of all leaves of `tree` together, in float32."""
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in leaves))


def probe(loss_and_gradient, params, step_sizes) -> dict[str, jax.Array]:
    """The landscape scalars at `params`.

    `loss_and_gradient(params)` returns (L, grad L) on the fixed batch; `step_sizes` is a 1-D
    array of the etas (> 0). The probed points are visited one after another (`lax.map`), so the
    memory is that of one gradient whatever the grid.
    """
    loss, gradient = loss_and_gradient(params)

    def along(eta):
        moved = jax.tree.map(lambda p, g: p - (eta * g).astype(p.dtype), params, gradient)
        moved_loss, moved_gradient = loss_and_gradient(moved)
        change = tree_norm(jax.tree.map(jnp.subtract, gradient, moved_gradient))
        return moved_loss.astype(jnp.float32), change

    step_sizes = jnp.asarray(step_sizes, jnp.float32)
    losses, changes = jax.lax.map(along, step_sizes)
    gradient_norm = tree_norm(gradient)
    return {
        "landscape/loss": loss.astype(jnp.float32),
        "landscape/gradient_norm": gradient_norm,
        "landscape/loss_range": jnp.max(losses) - jnp.min(losses),
        "landscape/gradient_predictiveness": jnp.max(changes),
        "landscape/beta_smoothness": jnp.max(changes / (step_sizes * gradient_norm)),
    }


def check_landscape_config(config: ml_collections.ConfigDict) -> None:
    """Raises a one-line UsageError for a bad `landscape` block."""
    if not isinstance(config.enabled, bool):
        raise UsageError(f"landscape.enabled={config.enabled!r} must be true or false")
    parse_duration(config.every)
    sizes = tuple(config.step_sizes)
    valid = all(
        isinstance(eta, (int, float)) and not isinstance(eta, bool) and 0 < eta < float("inf")
        for eta in sizes
    )
    if not sizes or not valid:
        raise UsageError(
            f"landscape.step_sizes={sizes!r} must be one or more positive, finite step sizes"
        )

"""Gradient accumulation: one update from k micro-batches, so a large batch fits small hardware.

``optax.MultiSteps`` averages the gradients of k consecutive ``update`` calls and hands the mean
to the optimizer on the k-th; the calls before it return zero updates. The train step is called
once per micro-batch and counts updates, not calls (``completed_update``), so the lr schedule,
the logged lr and every duration count updates of batch_size x k examples: the effective batch,
which the lr scaling rule and steps per epoch also use.

Without batch statistics, k micro-batches of B give the update of one batch of k*B (up to float
rounding of the running mean). With batch norm they do not: each micro-batch is normalized with
its own statistics, as ghost batch norm of size B would, and each updates the running averages.
"""

import jax
import optax


def accumulate(optimizer: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
    """`optimizer` applied once every `steps` calls to the mean of their gradients."""
    if steps == 1:
        return optimizer  # no accumulator to carry, no zero updates to apply
    return optax.MultiSteps(optimizer, every_k_schedule=steps).gradient_transformation()


def micro_step(opt_state) -> jax.Array | None:
    """Which micro-batch (0 .. k-1) of its update the next call sees; None without accumulation."""
    if isinstance(opt_state, optax.MultiStepsState):
        return opt_state.mini_step
    return None


def completed_update(new_opt_state) -> jax.Array | bool:
    """Whether the call that returned `new_opt_state` applied an update to the parameters."""
    if isinstance(new_opt_state, optax.MultiStepsState):
        return new_opt_state.mini_step == 0  # the counter wraps to 0 on the k-th call
    return True

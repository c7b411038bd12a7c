"""The train state: everything that changes during training, as one pytree."""
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jnp.ndarray        # int32 scalar: number of updates applied so far
    params: Any
    batch_stats: Any         # normalization state ({} for stateless models)
    opt_state: optax.OptState
    rng: jax.Array           # base key; each step derives its own by folding in the step


def create_train_state(model, optimizer: optax.GradientTransformation, image_shape, rng) -> TrainState:
    """Initializes parameters on a single example; pure, so it can run under `jax.jit`."""
    init_rng, state_rng = jax.random.split(rng)
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    variables = model.init({"params": init_rng, "dropout": init_rng}, dummy, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=optimizer.init(params),
        rng=state_rng,
    )

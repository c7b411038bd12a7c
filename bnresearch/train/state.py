"""The train state: everything that changes during training, as one pytree."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from bnresearch.layers.variables import RNG_STREAM, STATE
from bnresearch.measure.noise_scale import init_noise_scale


@flax.struct.dataclass
class TrainState:
    step: jnp.ndarray  # int32 scalar: number of updates applied so far (not micro-batches)
    params: Any
    batch_stats: Any  # normalization state ({} for stateless models)
    opt_state: optax.OptState
    rng: jax.Array  # base key; each step derives its own by folding in the step
    noise_scale: Any = None  # NoiseScaleState when the gradient noise scale is measured


def create_train_state(
    model,
    optimizer: optax.GradientTransformation,
    rng,
    images: jax.Array,
    measure_noise_scale: bool = False,
) -> TrainState:
    """Initializes the model on a batch of real training images; pure, so it can run under jit.

    The init pass is a training-mode forward, so data-dependent initializations (weight
    normalization's, Salimans & Kingma 2016) see the activations training will see; our
    normalizations do not count it as a step (their running statistics stay at their initial
    values).
    """
    init_rng, state_rng = jax.random.split(rng)
    params_rng, stochastic_rng = jax.random.split(init_rng)
    variables = model.init({"params": params_rng, RNG_STREAM: stochastic_rng}, images, train=True)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get(STATE, {}),
        opt_state=optimizer.init(params),
        rng=state_rng,
        noise_scale=init_noise_scale() if measure_noise_scale else None,
    )

"""The shapes and shardings of what the compiled steps take: the train state and the batches.

Known without computing anything (`jax.eval_shape` of the initialization), so preflight resolves
the state's layout once, before the workdir is claimed (a sharding rule that does not fit is
refused there), and a restore, the initialization and every compiled step read it.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from bnresearch.parallel.mesh import batch_sharding, stacked_batch_sharding
from bnresearch.parallel.sharding import state_shardings
from bnresearch.train.state import create_train_state


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """The train state's shapes and shardings: `abstract` holds ShapeDtypeStructs that carry
    the shardings, `sharding` the shardings alone (what jit's in/out_shardings take)."""

    abstract: Any
    sharding: Any

    @property
    def is_split(self) -> bool:
        """Whether some tensor of the state is split over devices (not held whole by each)."""
        return not all(sharding.is_fully_replicated for sharding in jax.tree.leaves(self.sharding))


def init_fn(model: nn.Module, optimizer: optax.GradientTransformation, measure_noise_scale: bool):
    """`create_train_state` of this run, as a function of (key, images)."""
    return functools.partial(
        create_train_state, model, optimizer, measure_noise_scale=measure_noise_scale
    )


def batch_shapes(
    images: int, image_shape, mesh: Mesh, stacked: int | None = None, mixed: bool = False
) -> dict:
    """The shapes of a train step's batch; with `stacked`, of that many batches stacked; `mixed`
    (mixup, CutMix) adds each example's partner label and label weight."""
    if stacked is None:
        lead, sharding = (), batch_sharding(mesh)
    else:
        lead, sharding = (stacked,), stacked_batch_sharding(mesh)
    image = jax.ShapeDtypeStruct((*lead, images, *image_shape), jnp.float32, sharding=sharding)
    label = jax.ShapeDtypeStruct((*lead, images), jnp.int32, sharding=sharding)
    if not mixed:
        return {"image": image, "label": label}
    weight = jax.ShapeDtypeStruct((*lead, images), jnp.float32, sharding=sharding)
    return {"image": image, "label": label, "mix_label": label, "mix_weight": weight}


def state_layout(
    init, first_batch_size: int, image_shape, mesh: Mesh, sharding: ml_collections.ConfigDict
) -> StateLayout:
    """The layout of the state `init` makes, each tensor sharded as the `sharding` block says
    (`bnresearch/parallel/sharding.py`); UsageError for a rule that does not fit a tensor."""
    images = batch_shapes(first_batch_size, image_shape, mesh)["image"]
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0), images)
    shardings = state_shardings(shapes, mesh, sharding)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
    )
    return StateLayout(abstract=abstract, sharding=shardings)

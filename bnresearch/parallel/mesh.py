"""The device mesh and the shardings of data parallelism.

One mesh axis, `data`: batches are split along it, parameters and optimizer state are
replicated. Under `jax.jit` with these shardings XLA inserts the cross-device reductions, so
batch-norm statistics and gradients are those of the global batch on 1 device, 8 devices or a
pod alike.
"""

from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bnresearch.errors import UsageError

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches stacked along a new leading axis, each split over the devices as one batch is."""
    return NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(name: str, batch_size: int, mesh: Mesh) -> None:
    """A global batch must split evenly over the devices (and so over the processes)."""
    devices = mesh.devices.size
    if batch_size <= 0 or batch_size % devices:
        raise UsageError(
            f"{name}={batch_size} does not split over {devices} devices: use a positive "
            f"multiple of {devices}"
        )


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assembles each process's share of a batch into one array sharded over the mesh."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def global_batches(local_batches: Sequence[dict], mesh: Mesh) -> dict:
    """`global_batch` of successive batches at once, stacked along a new leading axis."""
    sharding = stacked_batch_sharding(mesh)
    return jax.tree.map(
        lambda *xs: jax.make_array_from_process_local_data(sharding, np.stack(xs)), *local_batches
    )

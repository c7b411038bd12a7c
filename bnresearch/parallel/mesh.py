"""The device mesh, its shape from the config, and the shardings of batches.

Three mesh axes, in this order: `members`, `data` and `fsdp`. `members` spreads a population of
runs trained together (`bnresearch/train/population.py`) over the devices, each device holding
whole members, with no collectives between them; a single run keeps it at 1. A batch is split
over `data` and `fsdp` (every device sees its own slice of the global batch); how the train
state is laid out over them is `sharding.py`'s business (replicated: pure data parallelism;
fsdp: parameters and optimizer state split over the `fsdp` axis). Under `jax.jit` with these
shardings XLA inserts the cross-device reductions and gathers, so batch-norm statistics and
gradients are those of the global batch on 1 device, 8 devices or a pod alike.

`mesh.shape` in the config gives each axis's size; -1 (for one axis) takes the devices the
others leave. The default `{members: 1, data: -1, fsdp: 1}` is data parallelism over every device.
"""

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bnresearch.errors import UsageError

MEMBERS_AXIS = "members"
DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
# The axes one run's state and batches are laid out over (the sharding rules name these).
AXES = (DATA_AXIS, FSDP_AXIS)
MESH_AXES = (MEMBERS_AXIS, *AXES)
# The axes a batch is split over: all of them (FSDP is data parallelism whose replicas each keep
# a slice of the state).
BATCH_AXES = AXES


def resolve_shape(shape: Mapping[str, int], device_count: int) -> tuple[int, ...]:
    """Each axis's size, in MESH_AXES order, with -1 resolved; UsageError in one line if the
    sizes cannot tile `device_count` devices."""
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise UsageError(
            f"unknown mesh axis {unknown[0]!r} in mesh.shape; valid: {', '.join(MESH_AXES)}"
        )
    sizes = [shape.get(axis, 1) for axis in MESH_AXES]
    described = ", ".join(f"{axis}: {size}" for axis, size in zip(MESH_AXES, sizes))
    if any(size == 0 or size < -1 for size in sizes) or sizes.count(-1) > 1:
        raise UsageError(
            f"mesh.shape {{{described}}} is not a mesh: use positive sizes, and -1 for at most "
            f"one axis (it takes the devices the others leave)"
        )
    fixed = math.prod(size for size in sizes if size != -1)
    if -1 in sizes and device_count % fixed == 0:
        sizes[sizes.index(-1)] = device_count // fixed
    if math.prod(sizes) != device_count:
        raise UsageError(
            f"mesh.shape {{{described}}} does not tile the {device_count} devices present: use "
            f"sizes whose product is {device_count}, or -1 for the axis that takes the rest"
        )
    return tuple(sizes)


def make_mesh(
    shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """The mesh of `shape` (default: every device on `data`) over `devices` (default: all).

    The devices keep JAX's order (grouped by process) and fill the mesh row-major, so each
    process's devices hold one contiguous run of every batch, the share its input pipeline reads.
    """
    devices = jax.devices() if devices is None else list(devices)
    sizes = resolve_shape(shape or {DATA_AXIS: -1}, len(devices))
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def batch_devices(mesh: Mesh) -> int:
    """How many slices a batch is split into."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches stacked along a new leading axis, each split over the devices as one batch is."""
    return NamedSharding(mesh, PartitionSpec(None, BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(name: str, batch_size: int, mesh: Mesh) -> None:
    """A global batch must split evenly over the devices (and so over the processes)."""
    devices = batch_devices(mesh)
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

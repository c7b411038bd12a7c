"""How the train state is laid out over the mesh: a strategy by name, and rules by path.

`sharding.strategy` (config):
- `replicated`: every device holds the whole state; data parallelism.
- `fsdp`: every tensor of the state with at least `sharding.min_size` elements (a parameter,
  and its momenta, which have its shape) is split along its largest dimension that the `fsdp`
  axis's size divides (the last of equals: a kernel's output channels before its input
  channels). Smaller tensors (normalization gains and running statistics, biases, counters) stay
  replicated: splitting them saves little memory and adds a gather each. XLA gathers the
  parameters for the forward and backward passes and reduce-scatters the gradients; the train
  step is the same function, only the shardings given to `jax.jit` differ.

`sharding.rules`: (pattern, spec) pairs for anything custom, tried in order before the strategy
on each tensor's path, its keys joined by "/" (`params/Conv_0/kernel`,
`opt_state/0/trace/Conv_0/kernel`, `batch_stats/BatchNorm_0/mean`); `re.search` decides. The
first match gives the tensor's PartitionSpec: one mesh axis name (or None) per leading dimension.
A tensor no rule matches follows the strategy.

The state's numbers do not depend on any of this beyond float reassociation (docs/runs.md), so a
run may resume under another layout or device count: the checkpoint restores into whichever
shardings the new launch computes.
"""

import re
from typing import Callable

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bnresearch.errors import UsageError
from bnresearch.parallel.mesh import AXES, FSDP_AXIS


def _replicated_spec(shape: tuple[int, ...], mesh: Mesh, min_size: int) -> PartitionSpec:
    del shape, mesh, min_size
    return PartitionSpec()


def _fsdp_spec(shape: tuple[int, ...], mesh: Mesh, min_size: int) -> PartitionSpec:
    axis_size = mesh.shape[FSDP_AXIS]
    if axis_size == 1 or int(np.prod(shape)) < min_size:
        return PartitionSpec()
    divisible = [dim for dim, size in enumerate(shape) if size % axis_size == 0]
    if not divisible:
        return PartitionSpec()
    dim = max(divisible, key=lambda d: (shape[d], d))
    return PartitionSpec(*([None] * dim), FSDP_AXIS)


STRATEGIES: dict[str, Callable[[tuple[int, ...], Mesh, int], PartitionSpec]] = {
    "replicated": _replicated_spec,
    "fsdp": _fsdp_spec,
}


def _rule_spec(spec) -> PartitionSpec:
    return PartitionSpec(*spec) if isinstance(spec, (tuple, list)) else PartitionSpec(spec)


def check_sharding_config(settings: ml_collections.ConfigDict) -> None:
    """One-line UsageError for an unknown strategy, or a rule that is not (regex, spec) with a
    spec of mesh axis names and None; needs neither devices nor the model (whether a rule fits
    its tensors is judged with the state's shapes, `state_shardings`)."""
    if settings.strategy not in STRATEGIES:
        raise UsageError(
            f"unknown sharding.strategy {settings.strategy!r}; valid: {', '.join(STRATEGIES)}"
        )
    for index, rule in enumerate(settings.rules):
        where = f"sharding.rules[{index}]"
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
            raise UsageError(f"{where}={rule!r} is not a (pattern, spec) pair")
        try:
            re.compile(rule[0])
        except re.error as error:
            raise UsageError(f"{where}: pattern {rule[0]!r} is not a regex ({error})") from None
        spec = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],)
        for entry in spec:
            names = entry if isinstance(entry, (tuple, list)) else (entry,)
            if any(name is not None and name not in AXES for name in names):
                raise UsageError(
                    f"{where}: spec {rule[1]!r} names an axis the mesh does not have; valid: "
                    f"{', '.join(AXES)} or None"
                )


def _check_fits(name: str, shape: tuple[int, ...], spec: PartitionSpec, mesh: Mesh, rule: str):
    if len(spec) > len(shape):
        raise UsageError(f"{rule} gives {name} of shape {shape} a spec {spec} of more dimensions")
    for size, entry in zip(shape, spec):
        names = entry if isinstance(entry, tuple) else (entry,)
        split = int(np.prod([mesh.shape[n] for n in names if n is not None]))
        if size % split:
            raise UsageError(
                f"{rule} splits {name} of shape {shape} by {spec}: {size} does not divide over "
                f"{split} devices; change the rule or mesh.shape"
            )


def state_shardings(shapes, mesh: Mesh, settings: ml_collections.ConfigDict):
    """The NamedSharding of every tensor of a state (a pytree of shapes), by rule or strategy."""
    strategy = STRATEGIES[settings.strategy]
    rules = [(re.compile(pattern), _rule_spec(spec)) for pattern, spec in settings.rules]

    def sharding(path, leaf) -> NamedSharding:
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        for index, (pattern, spec) in enumerate(rules):
            if pattern.search(name):
                _check_fits(name, leaf.shape, spec, mesh, f"sharding.rules[{index}]")
                return NamedSharding(mesh, spec)
        return NamedSharding(mesh, strategy(tuple(leaf.shape), mesh, settings.min_size))

    return jax.tree_util.tree_map_with_path(sharding, shapes)


def bytes_per_device(abstract) -> int:
    """The bytes each device holds of a pytree of sharded ShapeDtypeStructs (the largest share,
    where shares differ)."""
    total = 0
    for leaf in jax.tree.leaves(abstract):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shard)) * leaf.dtype.itemsize
    return total

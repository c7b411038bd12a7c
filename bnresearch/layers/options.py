"""Layer options a population's members may each set to their own value: the normalizations'
epsilon and running-average momentum and the dropout rates.

A layer reads such an option through `option(self, name, value)`. In a single run, and in a
population whose members agree on it, that is ``value``, the Python number the layer was built
with, compiled into the program as a constant. A population whose members differ in it
(bnresearch/train/population.py) passes each member's values in the ``member_options``
collection at apply time (`with_options`), and the layer then computes with the member's own
value, a traced float32 scalar: one program for all members. The values come from each member's
own run: `recorded_options` traces its init abstractly while the layers report their options.
"""

import contextvars
import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

OPTIONS = "member_options"

_recorded = contextvars.ContextVar("recorded_options", default=None)


def option(module: nn.Module, name: str, value: float):
    """The layer's option `name`: the member's own value where a population passed one, else
    `value` (a Python number). Reported to `recorded_options` while it records."""
    if module.has_variable(OPTIONS, name):
        return module.get_variable(OPTIONS, name)
    recorded = _recorded.get()
    if recorded is not None:
        recorded[(*module.path, name)] = float(value)
    return value


def recorded_options(init: Callable, *args) -> dict:
    """{(module path..., option name): value} of every option the layers read in `init(*args)`
    (a run's init, `Setup.init`, on abstract arguments), traced by `jax.eval_shape`: nothing is
    computed."""
    recorded = {}
    token = _recorded.set(recorded)
    try:
        jax.eval_shape(init, *args)
    finally:
        _recorded.reset(token)
    return recorded


def differing_options(members: list[dict]) -> dict:
    """The options (keys of `recorded_options`) whose values are not the same in all members,
    as a flax collection: {module: {...: {name: float32 array of the members' values}}}."""
    if len({tuple(sorted(options)) for options in members}) > 1:
        raise ValueError("members' models read different layer options: not the same model")
    collection = {}
    for key in sorted(members[0]):
        values = [options[key] for options in members]
        if len(set(values)) == 1:
            continue
        *path, name = key
        node = collection
        for scope in path:
            node = node.setdefault(scope, {})
        node[name] = jnp.asarray(values, jnp.float32)
    return collection


@dataclasses.dataclass(frozen=True)
class WithOptions:
    """`model` whose `apply` passes one member's `options` (its slice of `differing_options`)
    to the layers: what the train and eval steps call in place of the model."""

    model: nn.Module
    options: dict

    def apply(self, variables: dict, *args, **kwargs):
        return self.model.apply({**variables, OPTIONS: self.options}, *args, **kwargs)


def with_options(model: nn.Module, options: dict):
    """`model` itself when no option differs, else `WithOptions`."""
    return WithOptions(model, options) if options else model

"""Name-to-module registries shared by normalizations, activations and models.

A registry maps a name to a linen Module class, or to a ``functools.partial`` of one that fixes
some of its fields (``'resnet20'`` is ``CifarResNet`` with ``depth=20``). An entry's options are
the class's dataclass fields minus linen's own (``parent``, ``name``), minus the fields the entry
fixes, minus the fields the caller fills in itself (``reserved``, e.g. ``dtype``). New entries
therefore need no registry code of their own: adding a field to a module adds an option.
"""

import dataclasses
import functools
from collections.abc import Callable, Collection, Mapping

import flax.linen as nn

from bnresearch.errors import UsageError

ModuleFactory = Callable[..., nn.Module]


def module_class(entry: ModuleFactory) -> type:
    """The Module class a registry entry builds."""
    return entry.func if isinstance(entry, functools.partial) else entry


def option_names(entry: ModuleFactory, reserved: Collection[str] = ()) -> tuple[str, ...]:
    """The options a user may set on a registry entry, in field order."""
    fixed = entry.keywords if isinstance(entry, functools.partial) else {}
    excluded = {"parent", "name", *fixed, *reserved}
    return tuple(
        f.name for f in dataclasses.fields(module_class(entry)) if f.init and f.name not in excluded
    )


def has_field(entry: ModuleFactory, field: str) -> bool:
    """Whether the module an entry builds has `field`, whether or not the entry fixes it."""
    return any(f.name == field for f in dataclasses.fields(module_class(entry)))


def lookup(
    kind: str,
    registry: Mapping[str, ModuleFactory],
    name: str,
    options: Mapping,
    reserved: Collection[str] = (),
) -> functools.partial:
    """The registry entry `name` with `options` bound; unknown names or options raise UsageError."""
    if name not in registry:
        raise UsageError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(registry)}")
    valid = option_names(registry[name], reserved)
    unknown = [option for option in options if option not in valid]
    if unknown:
        raise UsageError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for {kind} {name!r}; "
            f"valid options: {', '.join(valid) or '(none)'}"
        )
    return functools.partial(registry[name], **options)

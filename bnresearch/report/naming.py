"""Readable, filesystem-safe names for sweep points and report variants.

A point {"model.norm": "group", "model.norm_kwargs.num_groups": 8, "seed": 1} is named
`norm=group,num_groups=8,seed=1`: each field by the shortest dotted suffix that no other field of
the sweep shares, values as written. Standard library only (the sweep parent and the report use it).
"""

import hashlib
import json
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
_MAX_LENGTH = 120  # well under the 255 bytes of a file name, readable in a terminal column
EMPTY_NAME = "base"  # a point that overrides nothing: the config as it is


def short_labels(fields) -> dict[str, str]:
    """Each dotted field -> its shortest suffix that identifies it among `fields`."""
    fields = sorted(set(fields))
    labels = {}
    for field in fields:
        parts = field.split(".")
        for length in range(1, len(parts) + 1):
            suffix = ".".join(parts[-length:])
            if not any(
                other != field and (other == suffix or other.endswith("." + suffix))
                for other in fields
            ):
                break
        labels[field] = suffix
    return labels


def value_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "+".join(value_text(item) for item in value)
    return str(value)


def raw_name(overrides: dict, labels: dict[str, str]) -> str:
    if not overrides:
        return EMPTY_NAME
    name = ",".join(f"{labels[field]}={value_text(value)}" for field, value in overrides.items())
    name = _UNSAFE.sub("_", name).lstrip(".-") or EMPTY_NAME
    if len(name) > _MAX_LENGTH:
        digest = hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
        name = f"{name[: _MAX_LENGTH - 9]}~{digest}"
    return name


def labeled_name(label: str, overrides: dict) -> str:
    """A labeled point's name: its label, and its seed where it sets one."""
    name = label if "seed" not in overrides else f"{label},seed={overrides['seed']}"
    return _UNSAFE.sub("_", name)[:_MAX_LENGTH]


def unique_names(override_dicts: list[dict], point_labels: list | None = None) -> list[str]:
    """One name per dict, in order: its label (see ``labeled_name``) where `point_labels` gives
    one, else its overrides; names that sanitizing made equal get ~2, ~3, ..."""
    labels = short_labels(field for overrides in override_dicts for field in overrides)
    point_labels = point_labels or [None] * len(override_dicts)
    names, seen = [], {}
    for overrides, point_label in zip(override_dicts, point_labels):
        name = labeled_name(point_label, overrides) if point_label else raw_name(overrides, labels)
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}~{seen[name]}")
    return names

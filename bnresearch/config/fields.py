"""Dotted config fields ("model.norm_kwargs.num_groups"): their declared types, and one-line
errors that name the valid fields where a dotted name goes astray."""

import ml_collections
from ml_collections.config_flags import config_path

from bnresearch.errors import UsageError


def field_type(config: ml_collections.ConfigDict, field: str):
    """The declared type of a dotted field; a UsageError naming the valid fields if none."""
    node, walked = config, []
    for part in field.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            where = ".".join(walked) or "the config"
            valid = (
                ", ".join(sorted(node.keys()))
                if isinstance(node, ml_collections.ConfigDict)
                else "(none: it is not a group)"
            )
            raise UsageError(
                f"unknown config field {field!r}; fields of {where}: {valid or '(none)'}"
            )
        node = node[part]
        walked.append(part)
    return config_path.get_type(field, config)


def set_fields(config: ml_collections.ConfigDict, overrides: dict) -> None:
    """Sets each dotted field of `overrides` on `config`, as a config file sets a variant's
    fields; an unknown field is refused in one line naming the valid ones."""
    for field, value in overrides.items():
        field_type(config, field)
        config_path.set_value(field, config, value)


def with_defaults(stored: dict, defaults: dict) -> dict:
    """A stored config (a run's config.json) with every field it lacks taken from `defaults`
    (`base_config().to_dict()`): a run written before the kit gained a field reads as that field
    at its default, the value that keeps the run's behaviour (as `RunDirectory` compares)."""
    filled = dict(stored)
    for key, default in defaults.items():
        if key not in filled:
            filled[key] = default
        elif isinstance(default, dict) and isinstance(filled[key], dict):
            filled[key] = with_defaults(filled[key], default)
    return filled

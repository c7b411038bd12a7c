"""The short `key=value,...` argument of `get_config(arg)`.

`configs/quickstart.py:model=resnet20,norm=group` picks a variant of a config without a long
list of overrides. Each config declares the keys it understands with their defaults; the type of
a default decides how its value is parsed, and an unknown key is an error naming the valid ones.
"""

import ml_collections

from bnresearch.errors import UsageError


def _parse_value(key: str, text: str, default):
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", ""):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise UsageError(f"config arg {key}={text!r}: expected true or false")
    if isinstance(default, (int, float)):
        try:
            return type(default)(text)
        except ValueError:
            raise UsageError(
                f"config arg {key}={text!r}: expected a {type(default).__name__}"
            ) from None
    return text


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses `"a=1,b=x,flag"` against `defaults`; a bare key sets a boolean to true."""
    values = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, text = item.partition("=")
        key = key.strip()
        if key not in defaults:
            valid = ", ".join(sorted(defaults)) or "(none)"
            raise UsageError(f"unknown config arg {key!r}; valid: {valid}")
        values[key] = _parse_value(key, text.strip(), defaults[key])
    return ml_collections.ConfigDict(values)


def check_choice(key: str, value, valid) -> None:
    """Refuses an arg value outside `valid` in one line naming the valid ones. An entry
    `PREFIX:PATH` (`imagefolder:PATH`) admits any value that starts with `PREFIX:`."""
    prefixes = tuple(entry[: -len("PATH")] for entry in map(str, valid) if entry.endswith(":PATH"))
    if value in valid or (isinstance(value, str) and prefixes and value.startswith(prefixes)):
        return
    raise UsageError(
        f"unknown config arg {key}={value!r}; valid: {', '.join(str(v) for v in valid)}"
    )

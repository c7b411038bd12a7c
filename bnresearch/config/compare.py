"""Differences between two JSON-like configs, as lines a person reads in one error message."""

ABSENT = "<absent>"


def differences(old, new, prefix="", defaults=None):
    """Yields "field: old -> new" for every leaf that differs (absent leaves read <absent>).

    With `defaults` (a config of the same shape), a field `old` lacks is no difference where
    `new` holds its default: a field the kit gained after `old` was written, left at the value
    that keeps the earlier behaviour, changes nothing of that experiment.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        defaults = defaults if isinstance(defaults, dict) else {}
        for key in sorted(set(old) | set(new)):
            if key not in old and key in defaults and new.get(key) == defaults[key]:
                continue
            yield from differences(
                old.get(key, ABSENT), new.get(key, ABSENT), f"{prefix}{key}.", defaults.get(key)
            )
    elif old != new:
        yield f"{prefix.rstrip('.')}: {old!r} -> {new!r}"


def summarize(lines, shown: int = 5) -> str:
    lines = list(lines)
    return "; ".join(lines[:shown]) + ("; ..." if len(lines) > shown else "")

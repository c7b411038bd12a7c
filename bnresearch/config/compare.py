"""Differences between two JSON-like configs, as lines a person reads in one error message."""


def differences(old, new, prefix=""):
    """Yields "field: old -> new" for every leaf that differs (absent leaves read <absent>)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            yield from differences(
                old.get(key, "<absent>"), new.get(key, "<absent>"), f"{prefix}{key}."
            )
    elif old != new:
        yield f"{prefix.rstrip('.')}: {old!r} -> {new!r}"


def summarize(lines, shown: int = 5) -> str:
    lines = list(lines)
    return "; ".join(lines[:shown]) + ("; ..." if len(lines) > shown else "")

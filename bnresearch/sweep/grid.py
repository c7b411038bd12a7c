"""Small builders for sweeps written as data: lists of override dicts.

A config module defines its sweep next to `get_config`:

    from bnresearch.sweep import grid

    def get_sweep(arg=None):
        return grid.product(
            [{"model.norm": "batch"}, {"model.norm": "group", "model.norm_kwargs.num_groups": 8}],
            grid.axis("batch_size", [64, 256]),
            grid.seeds(3))

Each point is a dict of overrides with the dotted names of `--config.FIELD=VALUE`. A variant
made of several overrides can carry a readable name with `labeled`: its runs and its report row
are then named by the label (and the seed) instead of by every override. A grid is a plain list
of such dicts, so lists written by hand combine with these helpers. Standard library
only (and the error class): config modules import this, and the sweep's parent process never
imports JAX.
"""

import builtins
import itertools
from typing import Any, Iterable, Sequence

from bnresearch.errors import UsageError

Point = dict[str, Any]
# The key of a point's label; config fields never start with an underscore.
LABEL = "_label"


def labeled(label: str, overrides: Point) -> Point:
    """`overrides` named `label`:
    labeled("small_init", {"model.norm_kwargs.scale_init": 0.1, ...})."""
    return {LABEL: label, **overrides}


def axis(field: str, values: Iterable) -> list[Point]:
    """One point per value of one field: axis("batch_size", [64, 128])."""
    return [{field: value} for value in values]


def seeds(count: int, start: int = 0) -> list[Point]:
    """`count` repeats with seeds start, start+1, ...: the usual last factor of a product."""
    return axis("seed", range(start, start + count))


def _merge(points: Sequence[Point]) -> Point:
    merged: Point = {}
    for point in points:
        shared = merged.keys() & point.keys()
        if shared:
            raise UsageError(f"two factors of a sweep both set {', '.join(sorted(shared))}")
        merged.update(point)
    return merged


def product(*grids: Sequence[Point]) -> list[Point]:
    """Every combination, the last grid varying fastest (like nested for loops)."""
    return [_merge(combination) for combination in itertools.product(*grids)]


def zip(*grids: Sequence[Point]) -> list[Point]:  # noqa: A001 (grid.zip reads like zip)
    """Points paired position by position, e.g. a batch size with its own learning rate."""
    lengths = {len(grid) for grid in grids}
    if len(lengths) > 1:
        raise UsageError(f"grid.zip needs grids of one length, got {sorted(lengths)}")
    return [_merge(points) for points in builtins.zip(*grids)]

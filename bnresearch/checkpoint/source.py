"""Reading another run's checkpoint, read-only: the source of a fine-tuning run.

The source's workdir is never written: its checkpoints are listed and restored by an orbax
manager opened with ``read_only`` (no directory created, nothing saved or deleted), its
config.json is read, and its run lock is not taken, so a source still training is read as it
stands (its latest finished step).
"""

import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from bnresearch.errors import UsageError


def source_steps(workdir: pathlib.Path) -> list[int]:
    """The finished checkpoint steps of the run in `workdir`, oldest first; UsageError if it is
    not a run's workdir or holds none."""
    directory = workdir / "checkpoints"
    if not (workdir / "config.json").is_file() or not directory.is_dir():
        raise UsageError(
            f"init_from.workdir {workdir} is not a run's workdir (it needs config.json and "
            "checkpoints/)"
        )
    steps = _manager(directory).all_steps()
    if not steps:
        raise UsageError(f"init_from.workdir {workdir} holds no finished checkpoint")
    return sorted(steps)


def _manager(directory: pathlib.Path) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_names=("state",),
    )


def read_source(workdir: pathlib.Path, step: int) -> tuple[dict, dict, dict]:
    """(params, batch_stats, config) of the run in `workdir` at checkpoint `step`, the arrays as
    NumPy on the host."""
    manager = _manager(workdir / "checkpoints")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    state = restored["state"]
    to_host = lambda tree: jax.tree.map(np.asarray, tree or {})
    config = json.loads((workdir / "config.json").read_text())
    return to_host(state["params"]), to_host(state.get("batch_stats")), config

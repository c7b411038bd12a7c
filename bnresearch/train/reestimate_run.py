"""Re-estimating a finished run's normalization statistics, as a step after training:

    python -m bnresearch.train.reestimate_run WORKDIR [--step STEP] [--batch_size B]

Loads the run's config and its checkpoint (the latest, or STEP) read-only, evaluates it as
saved, re-estimates the running statistics by one pass over its training data (batches of B
images; default the run's batch size, at which its normalizations trained), evaluates again, and
prints both. For a model trained with small or ghost batches, whose running statistics average
noisy batch statistics of moving weights, the second number is the one its weights can give.
The result goes to WORKDIR/reestimated.json; the checkpoint and every other file of the run stay
as they are.
"""

import argparse
import functools
import logging
import pathlib

import jax
import ml_collections

from bnresearch import data
from bnresearch.checkpoint.source import read_source, source_steps
from bnresearch.config.defaults import base_config
from bnresearch.config.fields import with_defaults
from bnresearch.errors import UsageError
from bnresearch.parallel.mesh import make_mesh
from bnresearch.run_status import write_json
from bnresearch.train import reestimate, steps
from bnresearch.train.loop import evaluate
from bnresearch.train.preflight import resolve
from bnresearch.train.state import TrainState

log = logging.getLogger(__name__)


def reestimate_run(workdir, step: int | None = None, batch_size: int | None = None) -> dict:
    """Evaluates the run in `workdir` at `step` before and after re-estimating its statistics;
    returns (and writes to reestimated.json) both evaluations."""
    workdir = pathlib.Path(workdir).absolute()
    steps_saved = source_steps(workdir)
    step = steps_saved[-1] if step is None else step
    if step not in steps_saved:
        raise UsageError(
            f"--step {step} is not a checkpoint of {workdir}; its steps: {steps_saved}"
        )
    params, batch_stats, stored = read_source(workdir, step)
    config = ml_collections.ConfigDict(with_defaults(stored, base_config().to_dict()))
    batch_size = config.batch_size if batch_size is None else batch_size
    mesh = make_mesh()
    setup = resolve(config, data.load_dataset(config.dataset), mesh)
    model = setup.model
    eval_step = jax.jit(
        functools.partial(steps.eval_step, model=model), compiler_options=setup.compiler_options
    )

    def evaluated(statistics):
        state = TrainState(
            step=step, params=params, batch_stats=statistics, opt_state=None, rng=None
        )
        return evaluate(eval_step, state, setup.dataset, config.eval_batch_size, mesh)

    before = evaluated(batch_stats)
    batches = reestimate.statistics_batches(setup.dataset, batch_size, mesh)
    after = evaluated(
        reestimate.population_statistics(
            model, params, batch_stats, batches, setup.compiler_options
        )
    )
    record = {"step": step, "batch_size": batch_size, "as_saved": before, "reestimated": after}
    if jax.process_index() == 0:
        write_json(workdir / "reestimated.json", record)
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bnresearch.train.reestimate_run", description=__doc__
    )
    parser.add_argument("workdir", help="a run's workdir (config.json and checkpoints/)")
    parser.add_argument("--step", type=int, default=None, help="its checkpoint (default: latest)")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the run's")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        record = reestimate_run(args.workdir, args.step, args.batch_size)
    except UsageError as error:
        print(f"error: {error}")
        return 2
    for name in ("as_saved", "reestimated"):
        scalars = record[name]
        print(
            f"{name:>11}: eval loss {scalars['eval/loss']:.4f} | "
            f"eval accuracy {scalars['eval/accuracy']:.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

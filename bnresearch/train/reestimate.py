"""Re-estimating a model's population statistics: one pass over the training data.

The running statistics of batch norm are an EMA of batch statistics taken while the weights
moved; after fine-tuning on other data, or for a model trained with small or ghost batches, they
can be far from the statistics the final weights produce. Re-estimation replaces them by the
average, over one pass of full batches of the training split as evaluation sees it (no
augmentation), of the statistics each layer's EMA would take (batch mean and variance, the
variance unbiased in the 'pytorch' momentum convention), every layer normalizing with its batch
statistics as in training: the estimate of Ioffe & Szegedy's population statistics that
``torch.optim.swa_utils.update_bn`` also computes. Equal batches make it the plain mean of the
per-batch values.

Fine-tuning with ``fine_tune.norm=reestimate`` runs it before the first step
(``bnresearch/train/loop.py``).
"""

import functools

import jax
import jax.numpy as jnp
from flax import traverse_util

from bnresearch import data, models
from bnresearch.layers.variables import MOMENTS, RNG_STREAM, STATE
from bnresearch.parallel.mesh import global_batch


def _batch_moments(model, params, batch_stats, images):
    """The moments every normalization sows on `images`, as {path: value}."""
    _, sown = model.apply(
        {"params": params, STATE: batch_stats},
        images,
        train=True,
        mutable=[STATE, MOMENTS],
        # Stochastic layers draw as at step 0; the statistics pass is not a training step.
        rngs={RNG_STREAM: jax.random.key(0)},
    )
    # sow keeps a tuple of the values sown; each layer sows each statistic once per forward.
    return {path: values[0] for path, values in traverse_util.flatten_dict(sown[MOMENTS]).items()}


def population_statistics(
    model, params, batch_stats, batches, compiler_options: dict | None = None
) -> dict:
    """`batch_stats` with every running mean and variance that `model`'s normalizations keep
    replaced by its average over `batches` (global batches of equal size); the other state
    (step counters, other normalizations') unchanged. `compiler_options`: the run's XLA options
    (`Setup.compiler_options`)."""
    moments = jax.jit(
        functools.partial(_batch_moments, models.with_batch_statistics(model)),
        compiler_options=compiler_options,
    )
    sums, count = None, 0
    for batch in batches:
        values = moments(params, batch_stats, batch["image"])
        sums = values if sums is None else jax.tree.map(jnp.add, sums, values)
        count += 1
    flat = traverse_util.flatten_dict(batch_stats)
    for path, total in (sums or {}).items():
        flat[path] = total / count
    return traverse_util.unflatten_dict(flat)


def statistics_batches(dataset, batch_size: int, mesh):
    """The global batches of the statistics pass (``data.make_statistics_iterator``)."""
    for local_batch in data.make_statistics_iterator(
        dataset,
        batch_size=batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    ):
        yield global_batch(local_batch, mesh)

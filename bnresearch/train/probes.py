"""The measurements that keep no state ("probes"): each a config block with `enabled` and
`every`, a separate compiled function of (state, batch) returning scalars with their full metric
names, run by the loop on the (first micro-)batch of a due update before it is applied, as the
noise scale is. None changes the state, so a run measures exactly what it would train without
them; none is compiled when it is off.

    landscape         loss range, gradient predictiveness, beta-smoothness (measure/landscape.py)
    covariate_shift   per-layer internal covariate shift (measure/covariate_shift.py)
    activation_stats  per-normalization input and output statistics (measure/activations.py)
"""

import functools
from typing import Callable

import jax
import ml_collections

from bnresearch.measure.activations import check_activation_stats_config
from bnresearch.measure.covariate_shift import check_covariate_shift_config, forward_order
from bnresearch.measure.landscape import check_landscape_config
from bnresearch.train import steps

PROBES = ("landscape", "covariate_shift", "activation_stats")


def check_probes_config(config: ml_collections.ConfigDict) -> None:
    """Raises a one-line UsageError for a bad probe block of the whole `config`."""
    check_landscape_config(config.landscape)
    check_covariate_shift_config(config.covariate_shift, config.optimizer.accumulation_steps)
    check_activation_stats_config(config.activation_stats)


def probe_step(name: str, setup, batch: dict) -> Callable:
    """The function (state, batch) -> scalars of probe `name` for `setup`'s run; `batch`: the
    shapes of a train step's batch (the layer order of the covariate shift is read off the
    model's forward on it)."""
    config = setup.config
    common = {"model": setup.model, "label_smoothing": config.label_smoothing}
    # The landscape and the covariate shift compute gradients in a loop (`lax.map`), where XLA's
    # CPU backend runs convolutions ~25 times slower unless they are in its own order.
    if name == "landscape":
        return functools.partial(
            steps.landscape_step,
            step_sizes=tuple(config.landscape.step_sizes),
            on_cpu=setup.on_cpu,
            **common,
        )
    if name == "covariate_shift":
        abstract = setup.layout.abstract
        objective = functools.partial(steps.objective, rng=jax.random.key(0), **common)
        called = forward_order(objective, abstract.params, abstract.batch_stats, batch)
        layers = tuple(layer for layer in called if layer in abstract.params)
        return functools.partial(
            steps.covariate_shift_step,
            optimizer=setup.optimizer,
            layers=layers,
            on_cpu=setup.on_cpu,
            **common,
        )
    if name == "activation_stats":
        return functools.partial(
            steps.activation_stats_step,
            histogram_buckets=config.activation_stats.histogram_buckets,
            **common,
        )
    raise ValueError(f"unknown probe {name!r}; valid: {', '.join(PROBES)}")

"""Preflight: everything a run needs, checked and resolved once, before its workdir is claimed.

`preflight(config, rundir)` goes from the cheapest check to the costliest, so a typo fails in a
second with one line naming what is valid and a bad launch never touches an existing result:

1. `check_config`: every field, with no data and no compute (names, option values, ranges,
   durations, and what the configured batch sizes alone decide);
2. the devices: the mesh of `mesh.shape`, and every batch the config names splits over it;
3. the workdir: empty, or this same experiment (to resume); a finished run stops here;
4. the dataset: prepared once, opened; its facts (classes, image shape, training examples);
5. the `Plan` (`plan.py`): steps, phases, batches, lr schedule, cadences;
6. the model, built once with the run's facts and traced at every batch the plan feeds (the noise
   scale's sub-batches too);
7. fine-tuning (``transfer.py``): the source checkpoint read and matched to the model, what is
   frozen; then the optimizer on the plan's lr schedule, on the trained parameters;
8. the train state's layout over the mesh (`layout.py`): its shapes and the shardings the
   `sharding` block gives them.

What it returns (`Setup`) is all the training loop reads.
"""

import dataclasses
import logging
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from bnresearch import data, models
from bnresearch.config.durations import parse_duration
from bnresearch.config.ranges import check_ranges
from bnresearch.errors import UsageError
from bnresearch.measure.noise_scale import check_noise_scale_config
from bnresearch.optim.batch_size_schedule import schedule_from_config
from bnresearch.optim.learning_rate import BATCH_SIZE_SCHEDULE_LR, LR_SCALING_RULES, check_warmup
from bnresearch.optim.optimizers import check_optimizer_config, make_optimizer
from bnresearch.optim.schedules import DECAYS, make_schedule
from bnresearch.parallel.mesh import MEMBERS_AXIS, check_batch_size, make_mesh
from bnresearch.parallel.sharding import check_sharding_config
from bnresearch.run_status import DONE
from bnresearch.train.gradinit import check_gradinit_config
from bnresearch.train.layout import StateLayout, init_fn, state_layout
from bnresearch.train.plan import Plan, configured_batch_sizes, make_plan
from bnresearch.train.probes import check_probes_config
from bnresearch.train.rundir import RunDirectory
from bnresearch.train.transfer import (
    FROZEN_STATISTICS,
    FineTune,
    check_fine_tune_config,
    resolve_fine_tune,
)
from bnresearch.xla_flags import compile_options

log = logging.getLogger(__name__)

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Setup:
    """A run, resolved: what the training loop reads, and nothing it has to recompute."""

    config: ml_collections.ConfigDict
    rundir: RunDirectory
    dataset: data.Dataset
    plan: Plan
    mesh: Mesh
    model: nn.Module
    learning_rate_fn: Callable
    optimizer: optax.GradientTransformation
    init: Callable[[Any, Any], Any]  # (key, images) -> the initial TrainState
    layout: StateLayout
    compiler_options: dict  # XLA options of every program the run compiles (xla_flags.py)
    fine_tune: FineTune | None = None  # None: a run from scratch that trains everything

    @property
    def on_cpu(self) -> bool:
        """Whether the run computes on CPUs, whose XLA backend leaves convolutions inside a
        loop or a branch in JAX's slow order (``canonical_convolutions.py``)."""
        return self.mesh.devices.flat[0].platform == "cpu"


def _check_choice(field: str, value: str, valid) -> None:
    if value not in valid:
        raise UsageError(f"unknown {field} {value!r}; valid: {', '.join(valid)}")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises a one-line UsageError for anything wrong with `config` that needs no data."""
    check_ranges(config)
    data.DatasetSettings.from_config(config.dataset)  # the name, the augmentations, no data
    check_optimizer_config(config.optimizer)
    check_sharding_config(config.sharding)
    _check_choice("lr_scaling", config.lr_scaling, LR_SCALING_RULES)
    _check_choice("schedule.decay", config.schedule.decay, tuple(DECAYS))
    _check_choice("compute_dtype", config.compute_dtype, tuple(COMPUTE_DTYPES))
    schedule_from_config(config.batch_size_schedule)
    _check_choice("batch_size_schedule.lr", config.batch_size_schedule.lr, BATCH_SIZE_SCHEDULE_LR)
    check_warmup(config.schedule.warmup, config.schedule.warmup_rule, config.lr_scaling)
    images_per_call = [size for _, size in configured_batch_sizes(config)]
    check_noise_scale_config(config.noise_scale, images_per_call)
    check_probes_config(config)
    check_gradinit_config(config)
    models.check_model_config(
        config.model, batch_sizes=images_per_call, eval_batch_size=config.eval_batch_size
    )
    for duration in (
        config.train_duration,
        config.schedule.warmup,
        config.log_every,
        config.eval_every,
        config.checkpoint.every,
        *config.schedule.boundaries,
    ):
        parse_duration(duration)
    check_fine_tune_config(config)


def check_batches_split(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Every batch a train step may see (each phase's, with batch augmentation's copies) and the
    eval batch must split evenly over the devices."""
    for field, size in configured_batch_sizes(config):
        check_batch_size(field, size, mesh)
    check_batch_size("eval_batch_size", config.eval_batch_size, mesh)


def _build_model(
    config: ml_collections.ConfigDict, info: data.DatasetInfo, plan: Plan
) -> nn.Module:
    """The model, built once with the run's facts: tracing it at every batch a train step sees
    (shapes only) raises what a normalization cannot do at them, before any compute."""
    model = models.model_from_config(
        config.model,
        num_classes=info.num_classes,
        dtype=COMPUTE_DTYPES[config.compute_dtype],
        images_per_epoch=plan.images_per_epoch,
        accumulation_steps=plan.accumulation_steps,
        frozen_statistics=config.fine_tune.norm in FROZEN_STATISTICS,
        image_shape=info.image_shape,
        batch_sizes=plan.train_batch_sizes,
        eval_batch_size=config.eval_batch_size,
    )
    if plan.noise_scale is not None:
        _check_noise_scale_sub_batches(
            model, config.noise_scale.sub_batches, plan, info.image_shape
        )
    return model


def _check_noise_scale_sub_batches(
    model: nn.Module, sub_batches: int, plan: Plan, image_shape
) -> None:
    """The noise scale takes gradients on sub-batches of B / sub_batches images, each normalized
    on its own: the model must work at that size too (ghost batch norm's virtual batches must
    fit, batch statistics need more than one value per channel)."""
    sizes = sorted({size // sub_batches for size in plan.train_batch_sizes})
    try:
        for size in sizes:
            models.check_model_at_batch_size(model, size, image_shape)
    except UsageError as error:
        raise UsageError(
            f"noise_scale.sub_batches={sub_batches} measures gradients on "
            f"sub-batches of {', '.join(map(str, sizes))} images: {error}"
        ) from None


def preflight(config: ml_collections.ConfigDict, rundir: RunDirectory) -> Setup | None:
    """The run of `config` in `rundir`, resolved and checked; None if that run already finished.
    Raises a one-line UsageError for anything that cannot work; writes nothing."""
    check_config(config)
    mesh = make_mesh(config.mesh.shape.to_dict())
    if mesh.shape[MEMBERS_AXIS] > 1:
        raise UsageError(
            f"mesh.shape.members={mesh.shape[MEMBERS_AXIS]} spreads the members of a population "
            "(a sweep's --vectorize) over the devices; a single run takes members: 1"
        )
    check_batches_split(config, mesh)
    rundir.check(config)
    previous = rundir.status()
    if previous.get("status") == DONE:
        log.info("%s already finished at step %d; nothing to do", rundir.path, previous["step"])
        return None
    return resolve(config, data.load_dataset(config.dataset), mesh, rundir)


def resolve(
    config: ml_collections.ConfigDict, dataset, mesh: Mesh, rundir: RunDirectory | None = None
) -> Setup:
    """The plan, the model (built once, traced at every batch it will see), the fine-tuning, the
    optimizer and the state's layout of a checked `config` on an opened `dataset`: the part of
    preflight after the data. The benchmark calls it too, with random data of a dataset's
    shape."""
    plan = make_plan(config, dataset.info.num_train)
    model = _build_model(config, dataset.info, plan)
    fine_tune = resolve_fine_tune(
        config,
        model,
        dataset.info.image_shape,
        plan.train_batch_sizes[0],
        rundir.path if rundir is not None else None,
    )
    learning_rate_fn = make_schedule(plan.schedule)
    partition = fine_tune.partition if fine_tune is not None else None
    optimizer = make_optimizer(config.optimizer, learning_rate_fn, partition)
    init = init_fn(model, optimizer, measure_noise_scale=plan.noise_scale is not None)
    layout = state_layout(
        init, plan.train_batch_sizes[0], dataset.info.image_shape, mesh, config.sharding
    )
    return Setup(
        config=config,
        rundir=rundir,
        dataset=dataset,
        plan=plan,
        mesh=mesh,
        model=model,
        learning_rate_fn=learning_rate_fn,
        optimizer=optimizer,
        init=init,
        layout=layout,
        compiler_options=compile_options(mesh.devices.flat[0].platform, layout.is_split),
        fine_tune=fine_tune,
    )

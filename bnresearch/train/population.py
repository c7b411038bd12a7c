"""A population: several runs of one program (seeds, lr schedules, label smoothing, optimizer
numbers, the layer options of `layers/options.py`; `members.py` has the rules) trained together,
`jax.vmap` over their stacked train states, in one process.

Small models leave an accelerator idle between tiny kernels and pay a dataset load and a
compilation per run; a population pays them once and runs its members' steps as one program
(on a CPU a member's step costs what a single run's does: README, "Many runs in one
program"). Each member is still a normal run: its own workdir with config.json, metrics.jsonl,
status.json and checkpoints, written exactly as `loop.py` writes a single run's, so `--status`,
the report and a later single launch of that workdir cannot tell the difference.

`train_population` reads as its table of contents: `preflight_population` (each member's
preflight, the population rules of `members.py`, one shared dataset and model), lock and claim
every workdir, restore or initialize each member (from its own checkpoint and with its own seed),
stack them, compile the vmapped step once per batch size, then `run_population` with per-member
logging, evaluation, divergence and checkpoints.

What differs from a single run:
- The numbers: vmap reduces over the members' batches in other orders than a single run's
  program does (batch norm's means, the softmax's sums), so a member's first loss agrees with its
  single run's to float rounding (a few ulp), and training grows that difference as it grows any
  rounding; `tests/train/test_population.py` states the tolerances.
- Divergence: a member whose loss is not finite stops updating in the step itself (its state
  stays at its last finite values), is recorded as diverged at the next logging step, and the
  others go on.
"""

import contextlib
import dataclasses
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bnresearch import data
from bnresearch.checkpoint.manager import Checkpointer, PreemptionWatch
from bnresearch.errors import UsageError
from bnresearch.layers import options
from bnresearch.layers.convolution import convs_per_member
from bnresearch.optim.optimizers import make_optimizer
from bnresearch.parallel.mesh import BATCH_AXES, MEMBERS_AXIS, global_batch, make_mesh
from bnresearch.run_status import DIVERGED, DONE, FAILED, PREEMPTED, RUNNING
from bnresearch.train import log_window, loop, members, steps
from bnresearch.train.layout import batch_shapes
from bnresearch.train.preflight import Setup, check_batches_split, check_config, resolve
from bnresearch.train.rundir import MetricsLog, RunDirectory, jsonable

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Population:
    """The members' resolved runs (`Setup`s, in order) and what their one program shares."""

    setups: tuple[Setup, ...]
    mesh: Mesh
    dataset: data.Dataset
    # The layer options the members set to values of their own (layers/options.py): each a
    # float32 array of the members' values, in order; empty when they agree on every one.
    member_options: dict

    @property
    def size(self) -> int:
        return len(self.setups)

    @property
    def template(self) -> Setup:
        """The first member: every member has its model, optimizer settings and plan (but for
        the lr schedule), by `members.check_population`."""
        return self.setups[0]


def preflight_population(configs: list, workdirs: list) -> Population | None:
    """The unfinished members of `configs` in `workdirs`, resolved and checked as one
    population; None when every one of them has finished. Writes nothing."""
    if len(configs) != len(workdirs) or not configs:
        raise UsageError("a population needs one workdir per member config")
    if len({str(workdir) for workdir in workdirs}) != len(workdirs):
        raise UsageError("two members of the population share a workdir")
    members.check_population([jsonable(config) for config in configs])
    if jax.process_count() > 1:
        raise UsageError("a population trains in one process; launch several runs apart")
    for config in configs:
        check_config(config)
    mesh = make_mesh(configs[0].mesh.shape.to_dict())
    check_batches_split(configs[0], mesh)
    unfinished = []
    for config, workdir in zip(configs, workdirs):
        rundir = RunDirectory(workdir)
        rundir.check(config)
        previous = rundir.status()
        if previous.get("status") in (DONE, DIVERGED):
            log.info("%s already finished (%s)", rundir.path, previous["status"])
        else:
            unfinished.append((config, rundir))
    if not unfinished:
        return None
    if len(unfinished) % mesh.shape[MEMBERS_AXIS]:
        raise UsageError(
            f"{len(unfinished)} members to train do not split over mesh.shape.members="
            f"{mesh.shape[MEMBERS_AXIS]}: use a number of members it divides"
        )
    dataset = data.load_dataset(configs[0].dataset)
    setups = tuple(resolve(config, dataset, mesh, rundir) for config, rundir in unfinished)
    member_options = options.differing_options(
        [
            options.recorded_options(setup.init, jax.random.key(0), first_images(setup, dataset))
            for setup in setups
        ]
    )
    return Population(setups=setups, mesh=mesh, dataset=dataset, member_options=member_options)


def first_images(setup: Setup, dataset: data.Dataset) -> jax.ShapeDtypeStruct:
    """The shape of the images a run's init sees: its first training batch."""
    images = (setup.plan.train_batch_sizes[0], *dataset.info.image_shape)
    return jax.ShapeDtypeStruct(images, jnp.float32)


# ----- the vectorised program ------------------------------------------------------------------


def member_sharding(sharding: NamedSharding) -> NamedSharding:
    """A member's sharding with a leading members axis laid over the mesh's `members`."""
    return NamedSharding(sharding.mesh, PartitionSpec(MEMBERS_AXIS, *sharding.spec))


def stacked_layout(population: Population):
    """The population state's shapes and shardings: every leaf of a member's, stacked."""
    size = population.size
    abstract = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(
            (size, *leaf.shape), leaf.dtype, sharding=member_sharding(leaf.sharding)
        ),
        population.template.layout.abstract,
    )
    return abstract, jax.tree.map(lambda leaf: leaf.sharding, abstract)


def _batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(MEMBERS_AXIS, BATCH_AXES))


def _member_batches(local_batches: list[dict], mesh: Mesh) -> dict:
    """Each member's batch, stacked along a leading member axis, as one array over the mesh."""
    sharding = _batch_sharding(mesh)
    return jax.tree.map(
        lambda *xs: jax.make_array_from_process_local_data(sharding, np.stack(xs)),
        *local_batches,
    )


def _stack(trees: list, sharding):
    """The members' states as one, stacked on the host (jnp.stack would compile a program per
    leaf shape) and laid out as `sharding`."""
    stacked = jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *trees)
    return jax.device_put(stacked, sharding)


def _unstack(tree, member: int):
    return jax.tree.map(lambda leaf: leaf[member], tree)


def _split(states, population: Population) -> list:
    """Every member's own state, laid out as its single run's, for its checkpoint: sliced on the
    host from one copy of the stacked state. A compiled split would cost each population
    process a compilation (0.5 s for the quickstart's CNN) to save a copy at a checkpoint."""
    stacked = jax.device_get(states)
    sharding = population.template.layout.sharding
    return [jax.device_put(_unstack(stacked, i), sharding) for i in range(population.size)]


def _on_each_device(population: Population, local_fn, in_specs, out_specs):
    """`local_fn` over the members each device holds: with members spread over the mesh's
    `members` axis, a shard_map manual over that axis alone (data and fsdp stay XLA's to
    partition), so no member's computation reaches another device's; on one, as it is."""
    if population.mesh.shape[MEMBERS_AXIS] == 1:
        return local_fn
    return jax.shard_map(
        local_fn,
        mesh=population.mesh,
        in_specs=in_specs,
        out_specs=out_specs,
        axis_names=frozenset({MEMBERS_AXIS}),
    )


def population_step(population: Population):
    """(states, batches, alive) -> (states, alive, metrics): every member's train step, vmapped.

    Each member reads its own lr schedule (lax.switch on its index: under vmap every member's
    schedule is evaluated, a few scalars, and its own is selected), label smoothing and optimizer
    (weight decay, momentum: likewise switched, so with K members that differ in them each
    member computes K optimizer updates, elementwise work beside the convolutions); members
    sharing them all use the single run's functions as they are. A member not alive, or whose
    loss this step is not finite, keeps its state. Convs run one per member (XLA's CPU backend
    runs vmap's grouped conv slowly, layers/convolution.py).
    """
    template = population.template
    schedules = [setup.learning_rate_fn for setup in population.setups]
    smoothings = [setup.config.label_smoothing for setup in population.setups]
    same_schedule = all(
        setup.plan.schedule == template.plan.schedule for setup in population.setups
    )
    same_smoothing = len(set(smoothings)) == 1
    optimizer_configs = [setup.config.optimizer for setup in population.setups]
    same_optimizer = all(
        config.to_dict() == template.config.optimizer.to_dict() for config in optimizer_configs
    )

    def member_optimizer(index, learning_rate_fn) -> optax.GradientTransformation:
        if same_optimizer:
            return make_optimizer(template.config.optimizer, learning_rate_fn)
        # Same state structure in every member (members.check_population): only the numbers
        # differ, and each member takes its own optimizer's update.
        own = [make_optimizer(config, learning_rate_fn) for config in optimizer_configs]
        update = lambda grads, state, params=None: jax.lax.switch(
            index, [optimizer.update for optimizer in own], grads, state, params
        )
        return optax.GradientTransformation(own[0].init, update)

    def member_step(state, batch, index, smoothing, member_options):
        if same_schedule and same_optimizer:
            learning_rate_fn, optimizer = template.learning_rate_fn, template.optimizer
        else:
            learning_rate_fn = template.learning_rate_fn
            if not same_schedule:
                learning_rate_fn = lambda step: jax.lax.switch(index, schedules, step)
            optimizer = member_optimizer(index, learning_rate_fn)
        return steps.train_step(
            state,
            batch,
            model=options.with_options(template.model, member_options),
            optimizer=optimizer,
            learning_rate_fn=learning_rate_fn,
            label_smoothing=smoothings[0] if same_smoothing else smoothing,
        )

    def local_step(states, batches, alive, indices, smoothing, member_options):
        with convs_per_member():
            new_states, metrics = jax.vmap(member_step)(
                states, batches, indices, smoothing, member_options
            )
        finite = jnp.isfinite(metrics["loss"])
        if "aux_loss" in metrics:
            finite &= jnp.isfinite(metrics["aux_loss"])
        updated = alive & finite
        keep = lambda new, old: jnp.where(updated.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
        return jax.tree.map(keep, new_states, states), updated, metrics

    members = PartitionSpec(MEMBERS_AXIS)
    on_devices = _on_each_device(population, local_step, (members,) * 6, (members,) * 3)

    def step(states, batches, alive):
        indices = jnp.arange(population.size)
        smoothing = jnp.asarray(smoothings, jnp.float32)
        return on_devices(states, batches, alive, indices, smoothing, population.member_options)

    return step


def _eval_step(population: Population):
    """Every member's eval sums on one shared eval batch."""

    def member_eval(state, batch, member_options):
        model = options.with_options(population.template.model, member_options)
        return steps.eval_step(state, batch, model=model)

    def local_eval(states, batch, member_options):
        with convs_per_member():
            return jax.vmap(member_eval, in_axes=(0, None, 0))(states, batch, member_options)

    members = PartitionSpec(MEMBERS_AXIS)
    on_devices = _on_each_device(
        population, local_eval, (members, PartitionSpec(), members), members
    )
    return lambda states, batch: on_devices(states, batch, population.member_options)


def compile_population_steps(population: Population, start_step: int, layout):
    """The population's programs (`CompiledPopulation`): its train step for each batch size
    still to come and its eval step."""
    template, mesh = population.template, population.mesh
    abstract, sharding = layout
    alive_sharding = NamedSharding(mesh, PartitionSpec(MEMBERS_AXIS))
    step = population_step(population)
    train = {}
    for images, _ in sorted(template.plan.call_kinds_from(start_step)):
        shapes = batch_shapes(
            images,
            population.dataset.info.image_shape,
            mesh,
            mixed=population.dataset.augmentation.mix is not None,
        )
        batch = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(
                (population.size, *leaf.shape), leaf.dtype, sharding=_batch_sharding(mesh)
            ),
            shapes,
        )
        alive = jax.ShapeDtypeStruct((population.size,), jnp.bool_, sharding=alive_sharding)
        train[images] = (
            jax.jit(
                step,
                in_shardings=(
                    sharding,
                    jax.tree.map(lambda leaf: leaf.sharding, batch),
                    alive_sharding,
                ),
                out_shardings=(sharding, alive_sharding, alive_sharding),
                donate_argnums=0,
            )
            .lower(abstract, batch, alive)
            .compile(template.compiler_options)
        )
    eval_step = jax.jit(
        _eval_step(population),
        out_shardings=alive_sharding,
        compiler_options=template.compiler_options,
    )
    return CompiledPopulation(train=train, eval=eval_step)


@dataclasses.dataclass(frozen=True)
class CompiledPopulation:
    """The population's programs: its train step by images per member batch and its eval
    step."""

    train: dict
    eval: object


# ----- start: each member's checkpoint or its fresh state ---------------------------------------


@dataclasses.dataclass(frozen=True)
class Start:
    """Where the population starts: every member's state (stacked), step, time and open window."""

    states: object
    step: int
    elapsed_s: list[float]
    pending: list[dict | None]


def restore_or_init(population: Population, checkpointers, iterators, layout) -> Start:
    """Each member from its newest checkpoint at the step all members' checkpoints share, or
    fresh (its own seed, its own first batch) when they share none: a kill between two members'
    saves must not leave them at different steps. A member's later checkpoints are set aside
    (renamed, not deleted): the run saves those steps again."""
    shared = set.intersection(*(set(c.steps()) for c in checkpointers))
    step = max(shared, default=0)
    for checkpointer in checkpointers:
        checkpointer.set_aside_after(step, f"the population resumes at step {step}")
    if step:
        restored = [
            checkpointer.restore_latest(setup.layout.abstract, iterator, at_most=step)
            for setup, checkpointer, iterator in zip(population.setups, checkpointers, iterators)
        ]
        log.info("resumed %d members from their checkpoints at step %d", len(restored), step)
        return Start(
            states=_stack([state for _, state, _ in restored], layout[1]),
            step=step,
            elapsed_s=[progress["elapsed_s"] for _, _, progress in restored],
            pending=[progress.get("pending") for _, _, progress in restored],
        )
    # A member's fresh state is the single run's: its init compiled once (no backend
    # optimization, as loop.restore_or_init does) and called with each member's key and first
    # batch; a vmapped init would draw the same random bits but round the transforms otherwise.
    template = population.template
    first_batches = [
        global_batch(next(loop.make_train_iterator(setup)), population.mesh)
        for setup in population.setups
    ]
    keys = [jax.random.PRNGKey(setup.config.seed) for setup in population.setups]
    init_once = (
        jax.jit(template.init, out_shardings=template.layout.sharding)
        .lower(keys[0], first_batches[0]["image"])
        .compile({**template.compiler_options, "xla_backend_optimization_level": 0})
    )
    states = [init_once(key, batch["image"]) for key, batch in zip(keys, first_batches)]
    size = population.size
    return Start(_stack(states, layout[1]), 0, [0.0] * size, [None] * size)


# ----- the loop ---------------------------------------------------------------------------------


class _Member:
    """One member's bookkeeping in the loop: its metrics file, the logging window a preemption
    left open in its checkpoint, its status and last step."""

    def __init__(self, setup: Setup, start: Start, index: int):
        self.setup, self.index = setup, index
        self.metrics_log = MetricsLog(setup.rundir, resume_step=start.step)
        pending = start.pending[index]
        self.restored = log_window.pending_from_json(pending)[0] if pending else []
        self.elapsed_s = start.elapsed_s[index]
        self.status, self.step = RUNNING, start.step

    @property
    def training(self) -> bool:
        return self.status == RUNNING

    def window(self, fetched: list) -> list:
        """Its train metrics since the last logging step: restored ones, then its slice of the
        calls' stacked metrics (`fetched`)."""
        return self.restored + [_unstack(metrics, self.index) for metrics in fetched]


def run_population(population, compiled, start: Start, checkpointers, iterators, preemption):
    """Trains every member from `start` to the plan's last step or a preemption; a member that
    diverges stops there, the others go on. Returns each member's (status, step, wall time)."""
    plan, mesh = population.template.plan, population.mesh
    states, step = start.states, start.step
    alive = jax.device_put(
        jnp.ones(population.size, jnp.bool_), NamedSharding(mesh, PartitionSpec(MEMBERS_AXIS))
    )
    group = [_Member(setup, start, index) for index, setup in enumerate(population.setups)]
    progress = log_window.Progress(plan.total_steps, step)
    # The calls' metrics since the last logging step, stacked over members, left on the device
    # until then; the window starts at the same step for every member.
    window = []
    window_start = int(start.pending[0]["window_start"]) if start.pending[0] else step + 1
    clock_start = time.perf_counter()

    def save(member: _Member, member_states, **extra):
        checkpointers[member.index].save(
            step,
            member_states[member.index],
            iterators[member.index],
            {"elapsed_s": member.elapsed_s + time.perf_counter() - clock_start, **extra},
        )

    try:
        while step < plan.total_steps:
            phase = plan.timeline.phase_at(step)
            local_batches = [next(iterator) for iterator in iterators]
            states, alive, metrics = compiled.train[plan.images_per_call(phase)](
                states, _member_batches(local_batches, mesh), alive
            )
            window.append(metrics)
            step += 1
            preempted = preemption.should_stop(step)
            must_save = plan.is_due(plan.checkpoint, step)
            if plan.is_due(plan.log, step) or must_save:
                fetched = jax.device_get(window)
                for member in filter(lambda member: member.training, group):
                    _log_train(member, fetched, window_start, step, phase, plan)
                _report(progress, step, group, fetched, phase, plan)
                window, window_start = [], step + 1
                for member in group:
                    member.restored = []
            if plan.is_due(plan.eval, step):
                _evaluate(population, compiled.eval, states, group, step)
            member_states = _split(states, population) if must_save or preempted else None
            fetched = jax.device_get(window) if preempted and not must_save else None
            for member in filter(lambda member: member.training, group):
                member.step = step
                if must_save:
                    save(member, member_states)
                elif preempted:
                    pending = log_window.pending_to_json(member.window(fetched), window_start, [])
                    save(member, member_states, pending=pending)
                if preempted:
                    member.status = PREEMPTED
            if preempted:
                log.warning("preempted: saved every member's checkpoint at step %d", step)
                break
            if not any(member.training for member in group):
                break
        else:
            for member in filter(lambda member: member.training, group):
                member.status = DONE
    except Exception as error:
        for member in group:
            member.setup.rundir.set_status(
                FAILED, member.step, error=f"{type(error).__name__}: {error}"
            )
        raise
    finally:
        for member in group:
            member.metrics_log.close()
    wall = time.perf_counter() - clock_start
    return [(member.status, member.step, member.elapsed_s + wall) for member in group]


def _log_train(member: _Member, fetched: list, window_start: int, step: int, phase, plan):
    """A member's train record of a logging window, as a single run writes it; a loss that is
    not finite ends the member as diverged at the step it first appeared."""
    scalars, diverged_at = log_window.summarize(
        member.window(fetched), window_start, plan.accumulation_steps
    )
    scalars["train/batch_size"] = phase.examples_per_update
    scalars["train/epoch"] = plan.timeline.epoch_at(step)
    member.metrics_log.write(step, scalars)
    if diverged_at is not None:
        log.warning(
            "%s: loss is not finite at step %d: the member diverged; the others go on",
            member.setup.rundir.path,
            diverged_at,
        )
        member.status, member.step = DIVERGED, diverged_at


def _report(progress, step: int, group: list, fetched: list, phase, plan) -> None:
    """One console line for the population: means over the members still training."""
    training = [member.index for member in group if member.training]
    if not training or not fetched:
        return
    mean = lambda key: float(np.mean([np.asarray(m[key])[training] for m in fetched]))
    scalars = {
        "train/loss": mean("loss"),
        "train/accuracy": mean("accuracy"),
        "train/lr": float(np.asarray(fetched[-1]["lr"])[training[0]]),
    }
    progress.report(step, scalars, phase.examples_per_update * plan.multiplicity * len(training))


def _evaluate(population: Population, eval_step, states, group: list, step: int) -> None:
    """Every training member's eval record, from one pass over the eval set."""
    totals = None
    for local_batch in data.make_eval_iterator(
        population.dataset,
        batch_size=population.template.config.eval_batch_size,
        process_index=0,
        process_count=1,
    ):
        sums = eval_step(states, global_batch(local_batch, population.mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    accuracies = []
    for member in filter(lambda member: member.training, group):
        scalars = loop.eval_scalars(_unstack(totals, member.index))
        member.metrics_log.write(step, scalars)
        accuracies.append(f"{scalars['eval/accuracy']:.4f}")
    log.info("step %d | eval accuracy of each member: %s", step, " ".join(accuracies))


# ----- entry point ------------------------------------------------------------------------------


def train_population(configs: list, workdirs: list, launched: float | None = None) -> list[str]:
    """Trains (or resumes) each config's run in its workdir, as one population; returns each
    member's final status (in order; a finished member's as it was)."""
    preemption = PreemptionWatch()
    try:
        population = preflight_population(configs, workdirs)
        if population is None:
            return [RunDirectory(w).status()["status"] for w in workdirs]
        with contextlib.ExitStack() as held:
            for setup in population.setups:
                held.enter_context(setup.rundir.hold(setup.config))
            for setup in population.setups:
                setup.rundir.claim(setup.config)
            outcomes = _train(population, preemption, launched)
        by_workdir = {str(s.rundir.path): o for s, o in zip(population.setups, outcomes)}
        return [
            by_workdir.get(str(RunDirectory(w).path), RunDirectory(w).status().get("status"))
            for w in workdirs
        ]
    finally:
        preemption.close()


def _train(population: Population, preemption: PreemptionWatch, launched) -> list[str]:
    setups = population.setups
    iterators = [loop.make_train_iterator(setup) for setup in setups]
    checkpointers = [
        Checkpointer(setup.rundir.checkpoints.absolute(), keep=setup.config.checkpoint.keep)
        for setup in setups
    ]
    layout = stacked_layout(population)
    statuses = None
    try:
        start = restore_or_init(population, checkpointers, iterators, layout)
        plan = population.template.plan
        for setup in setups:
            setup.rundir.record_environment(
                start.step,
                {
                    "mesh": dict(population.mesh.shape),
                    "sharding": setup.config.sharding.to_dict(),
                    "population": [str(s.rundir.path) for s in setups],
                },
            )
            setup.rundir.set_status(RUNNING, start.step, total_steps=plan.total_steps)
        compiled = compile_population_steps(population, start.step, layout)
        if launched is not None:
            log.info("compiled; %.1f s after the launch", time.time() - launched)
        outcomes = run_population(population, compiled, start, checkpointers, iterators, preemption)
    finally:
        for checkpointer in checkpointers:
            checkpointer.close()
    statuses = []
    for setup, (status, step, wall) in zip(setups, outcomes):
        setup.rundir.set_status(
            status, step, total_steps=population.template.plan.total_steps, wall_time_s=wall
        )
        statuses.append(status)
    return statuses

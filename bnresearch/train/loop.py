"""The training loop: from a config and a workdir to a trained, evaluated, checkpointed model.

`train_and_evaluate` reads as its table of contents: the preemption watch (first, so that a
notice during the start-up ends it cleanly), `preflight` (every check, the dataset, the plan, the
model and the optimizer, resolved once; `preflight.py`), lock and claim the workdir,
`restore_or_init` the train state, `compile_steps` once per batch size, then `run_loop`: one
compiled call per iteration, of `steps_per_call` updates or one (k train steps each when
gradients accumulate), the noise-scale measurement when due, periodic logging, evaluation and
checkpoints. The math lives in `steps.py`.
"""

import dataclasses
import functools
import logging
import time
from typing import Callable

import jax
import jax.numpy as jnp

from bnresearch import data
from bnresearch.checkpoint.manager import Checkpointer, PreemptionWatch
from bnresearch.parallel.mesh import global_batch, global_batches, replicated
from bnresearch.run_status import DIVERGED, DONE, FAILED, PREEMPTED, RUNNING
from bnresearch.train import gradinit, log_window, probes, reestimate, steps, transfer
from bnresearch.train.canonical_convolutions import canonical_convolutions
from bnresearch.train.layout import StateLayout, batch_shapes
from bnresearch.train.preflight import Setup, preflight
from bnresearch.train.rundir import MetricsLog, RunDirectory
from bnresearch.train.state import TrainState

log = logging.getLogger(__name__)


# JAX's events for turning a function into an executable: tracing it, lowering it for XLA, and
# compiling it, or loading it from the persistent compilation cache (the last event times both).
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class _StartUp:
    """A launch's start-up: from its start to its first step done, and the part of that JAX spent
    compiling (counted from the moment this object is made to `close`)."""

    def __init__(self, launched: float):
        self._launched = launched
        self._compiling_s = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._count)

    def _count(self, event: str, duration: float, **details) -> None:
        if event in _COMPILE_EVENTS:
            self._compiling_s += duration

    def first_step_done(self, state: TrainState, rundir: RunDirectory) -> None:
        """Logs the start-up at the end of the first step (waited for) and records it with the
        launch's environment."""
        jax.block_until_ready(state)
        seconds = time.time() - self._launched
        log.info("first step after %.1f s (compiling %.1f s)", seconds, self._compiling_s)
        rundir.record_startup(seconds, self._compiling_s)

    def close(self) -> None:
        jax.monitoring.unregister_event_duration_listener(self._count)


def _measurement_names(values: dict) -> dict:
    """The metric names of a measurement's scalars: the probes give theirs in full
    ('landscape/loss_range'); the noise scale's bare names are logged under train/ (and so
    stand in checkpoints' pending windows)."""
    return {key if "/" in key else f"train/{key}": value for key, value in values.items()}


def evaluate(eval_step, state: TrainState, dataset, batch_size: int, mesh) -> dict:
    totals = None
    for local_batch in data.make_eval_iterator(
        dataset,
        batch_size=batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    ):
        sums = eval_step(state, global_batch(local_batch, mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    return eval_scalars(jax.device_get(totals))


def eval_scalars(totals: dict) -> dict:
    """The eval record from eval_step's sums over the eval set (fetched)."""
    scalars = {
        "eval/loss": float(totals["loss_sum"] / totals["count"]),
        "eval/accuracy": float(totals["correct_sum"] / totals["count"]),
    }
    if "top5_sum" in totals:  # eval_step sums it for more than 10 classes only
        scalars["eval/top5_accuracy"] = float(totals["top5_sum"] / totals["count"])
    return scalars


def _eval_line(scalars: dict) -> str:
    """The console's eval record: loss, accuracy and, where measured, top-5 accuracy."""
    line = f"eval loss {scalars['eval/loss']:.4f} | eval accuracy {scalars['eval/accuracy']:.4f}"
    if "eval/top5_accuracy" in scalars:
        line += f" | eval top-5 accuracy {scalars['eval/top5_accuracy']:.4f}"
    return line


@dataclasses.dataclass(frozen=True)
class Start:
    """Where training starts: the state after `step` updates, the wall time already spent and,
    after a preemption between logging steps, the logging window it left open."""

    state: TrainState
    step: int
    elapsed_s: float
    pending: dict | None


@dataclasses.dataclass(frozen=True)
class CompiledSteps:
    """The step functions, compiled, by images per train step: one train step, the K updates of
    a call (none when K = 1), the noise scale and the probes on (by name, then images)."""

    train: dict[int, Callable]
    k_steps: dict[int, Callable]
    noise_scale: dict[int, Callable] | None
    eval: Callable
    probes: dict[str, dict[int, Callable]] = dataclasses.field(default_factory=dict)


def make_train_iterator(setup: Setup):
    """The training stream: a pure function of (seed, position), so a restore can seek it."""
    plan = setup.plan
    return data.make_train_iterator(
        setup.dataset,
        seed=setup.config.seed,
        batch_size=setup.config.batch_size,
        batch_size_changes=plan.batch_size_changes(),
        multiplicity=plan.multiplicity,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def restore_or_init(setup: Setup, checkpointer: Checkpointer, train_iterator) -> Start:
    """The newest checkpoint that restores (moving `train_iterator` to its position; damaged newer
    ones are set aside), or a fresh state: with GradInit's learned scales folded in
    (``gradinit.tune``), or a fine-tuning run's from its source (``transfer.start_state``)."""
    restored = checkpointer.restore_latest(setup.layout.abstract, train_iterator)
    if restored is not None:
        step, state, progress = restored
        log.info("resumed from the checkpoint at step %d", step)
        return Start(state, step, progress["elapsed_s"], progress.get("pending"))
    # Initialized on the first training batch, read from an iterator of its own so the training
    # stream is untouched.
    first_batch = global_batch(next(make_train_iterator(setup)), setup.mesh)
    key = jax.random.PRNGKey(setup.config.seed)
    # It runs once, so it is compiled without backend optimization: XLA's optimizing the random
    # initializers costs seconds per layer (9 s of a small CNN's 20 s run on a CPU core), and the
    # values it gives agree with the optimized program's to rounding.
    init_once = (
        jax.jit(setup.init, out_shardings=setup.layout.sharding)
        .lower(key, first_batch["image"])
        .compile({**setup.compiler_options, "xla_backend_optimization_level": 0})
    )
    state = init_once(key, first_batch["image"])
    if setup.config.model.init_method == "gradinit":  # learned scales, on a stream of its own
        state = gradinit.tune(setup, state, make_train_iterator(setup))
    if setup.fine_tune is not None:
        state = transfer.start_state(
            setup.fine_tune,
            state,
            model=setup.model,
            optimizer=setup.optimizer,
            statistics_batches=lambda: reestimate.statistics_batches(
                setup.dataset, setup.plan.train_batch_sizes[0], setup.mesh
            ),
            sharding=setup.layout.sharding,
            compiler_options=setup.compiler_options,
        )
    return Start(state, 0, 0.0, None)


def _compile(
    step_fn, batch: dict, *, layout: StateLayout, out_shardings, donate_state: bool, options: dict
):
    """`step_fn(state, batch)` compiled ahead of time for `batch`'s shapes and shardings.

    A compiled executable never recompiles (a call with another shape is an error), so each kind
    of call the run makes (each batch size of a schedule; K updates or one) is compiled once, up
    front, and the steady state cannot recompile.
    """
    return (
        jax.jit(
            step_fn,
            in_shardings=(layout.sharding, jax.tree.map(lambda leaf: leaf.sharding, batch)),
            out_shardings=out_shardings,
            donate_argnums=0 if donate_state else (),
        )
        .lower(layout.abstract, batch)
        .compile(options)
    )


def compile_steps(setup: Setup, start_step: int) -> CompiledSteps:
    """The train step for every kind of call still to come (its batch; K updates or one), and the
    noise-scale step for every batch."""
    config, plan, mesh, layout = setup.config, setup.plan, setup.mesh, setup.layout
    batch_at = functools.partial(
        batch_shapes,
        image_shape=setup.dataset.info.image_shape,
        mesh=mesh,
        mixed=setup.dataset.augmentation.mix is not None,
    )
    compile_start = time.perf_counter()
    train_step = functools.partial(
        steps.train_step,
        model=setup.model,
        optimizer=setup.optimizer,
        learning_rate_fn=setup.learning_rate_fn,
        label_smoothing=config.label_smoothing,
    )
    # In a loop XLA's CPU backend leaves the convolutions in the order JAX wrote them (slow, and
    # summing otherwise than a single step): canonical_convolutions.py.
    train_k_steps = functools.partial(
        steps.train_steps,
        train_step=canonical_convolutions(train_step) if setup.on_cpu else train_step,
    )
    micro_batches = plan.steps_per_call * plan.accumulation_steps
    compile_train = functools.partial(
        _compile,
        layout=layout,
        out_shardings=(layout.sharding, replicated(mesh)),
        donate_state=True,
        options=setup.compiler_options,
    )
    kinds = plan.call_kinds_from(start_step)
    batch_sizes = sorted({images for images, _ in kinds})
    train = {
        images: compile_train(train_step, batch_at(images))
        for images, updates in sorted(kinds)
        if updates == 1
    }
    k_steps = {
        images: compile_train(train_k_steps, batch_at(images, stacked=micro_batches))
        for images, updates in sorted(kinds)
        if updates > 1
    }
    # A measurement reads the state and leaves it as it is: not donated, results replicated.
    compile_measurement = functools.partial(
        _compile,
        layout=layout,
        out_shardings=replicated(mesh),
        donate_state=False,
        options=setup.compiler_options,
    )
    noise_scale = None
    if plan.noise_scale is not None:
        noise_scale_step = functools.partial(
            steps.noise_scale_step,
            model=setup.model,
            sub_batches=config.noise_scale.sub_batches,
            ema_decay=config.noise_scale.ema_decay,
            label_smoothing=config.label_smoothing,
        )
        noise_scale = {
            images: compile_measurement(noise_scale_step, batch_at(images))
            for images in batch_sizes
        }
    compiled_probes = {
        name: {
            images: compile_measurement(
                probes.probe_step(name, setup, batch_at(images)), batch_at(images)
            )
            for images in batch_sizes
        }
        for name in plan.probes
    }
    log.info(
        "compiled the train step for batch size(s) %s%s in %.1f s",
        ", ".join(map(str, batch_sizes)),
        f" (and calls of {plan.steps_per_call} updates)" if k_steps else "",
        time.perf_counter() - compile_start,
    )
    eval_step = jax.jit(
        functools.partial(steps.eval_step, model=setup.model),
        out_shardings=replicated(mesh),
        compiler_options=setup.compiler_options,
    )
    return CompiledSteps(
        train=train,
        k_steps=k_steps,
        noise_scale=noise_scale,
        eval=eval_step,
        probes=compiled_probes,
    )


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How the loop ended: the run's status, its last step and its wall time over all launches."""

    status: str
    step: int
    wall_time_s: float


def run_loop(
    setup: Setup,
    compiled: CompiledSteps,
    start: Start,
    checkpointer: Checkpointer,
    train_iterator,
    preemption: PreemptionWatch,
    startup: _StartUp,
) -> Outcome:
    """Trains from `start` to the plan's last step, a preemption or a divergence."""
    config, plan, mesh, rundir = setup.config, setup.plan, setup.mesh, setup.rundir
    state, step = start.state, start.step
    metrics_log = MetricsLog(rundir, resume_step=step)
    progress_log = log_window.Progress(plan.total_steps, step)
    # A preemption between logging steps saves the open logging window with the checkpoint, so
    # the resumed run logs exactly the records of one that never stopped.
    window, window_start, measurements = (
        log_window.pending_from_json(start.pending) if start.pending else ([], step + 1, [])
    )
    status = RUNNING
    clock_start = time.perf_counter()

    def save(at_step, **extra):
        checkpointer.save(
            at_step,
            state,
            train_iterator,
            {"elapsed_s": start.elapsed_s + time.perf_counter() - clock_start, **extra},
        )

    try:
        while step < plan.total_steps:
            phase = plan.timeline.phase_at(step)
            images = plan.images_per_call(phase)
            updates = plan.updates_in_call(step)
            local_batches = [next(train_iterator) for _ in range(updates * plan.accumulation_steps)]
            if plan.noise_scale is not None and plan.noise_scale.is_due(step + 1):
                # On the (first micro-)batch of update step + 1, before it is applied.
                noise_scale, noise_scalars = compiled.noise_scale[images](
                    state, global_batch(local_batches[0], mesh)
                )
                state = state.replace(noise_scale=noise_scale)
                measurements.append((step + 1, noise_scalars))
            for name, cadence in plan.probes.items():  # the same batch; the state is unchanged
                if cadence.is_due(step + 1):
                    batch = global_batch(local_batches[0], mesh)
                    measurements.append((step + 1, compiled.probes[name][images](state, batch)))
            if updates == 1:  # the train step itself, once per micro-batch
                for local_batch in local_batches:
                    state, step_metrics = compiled.train[images](
                        state, global_batch(local_batch, mesh)
                    )
                    window.append(step_metrics)
            else:  # K updates in one call, their metrics stacked
                state, steps_metrics = compiled.k_steps[images](
                    state, global_batches(local_batches, mesh)
                )
                window.append(steps_metrics)
            first, step = step, step + updates
            if first == start.step:
                startup.first_step_done(state, rundir)
            # Nothing is due inside a call (Plan.updates_in_call), so only its last step counts.
            must_save = plan.is_due(plan.checkpoint, step)
            # Asked at every step the call made, in order: with several processes JAX's
            # preemption protocol expects each step and may pick any for the stop, which then
            # comes at the end of the call, on every process alike.
            preempted = any([preemption.should_stop(done) for done in range(first + 1, step + 1)])
            if plan.is_due(plan.log, step) or must_save:
                scalars, diverged_at = log_window.summarize(
                    window, window_start, plan.accumulation_steps
                )
                window, window_start = [], step + 1
                for at_step, values in jax.device_get(measurements):
                    metrics_log.write(at_step, _measurement_names(values))
                measurements = []
                scalars["train/batch_size"] = phase.examples_per_update
                scalars["train/epoch"] = plan.timeline.epoch_at(step)
                metrics_log.write(step, scalars)
                if diverged_at is not None:
                    log.warning("loss is not finite at step %d: the run diverged", diverged_at)
                    status, step = DIVERGED, diverged_at
                    break
                progress_log.report(step, scalars, phase.examples_per_update * plan.multiplicity)
            if plan.is_due(plan.eval, step):
                eval_scalars = evaluate(
                    compiled.eval, state, setup.dataset, config.eval_batch_size, mesh
                )
                metrics_log.write(step, eval_scalars)
                log.info("step %d | %s", step, _eval_line(eval_scalars))
            if must_save:
                save(step)
            elif preempted:
                save(step, pending=log_window.pending_to_json(window, window_start, measurements))
            if preempted:
                log.warning("preempted: saved the checkpoint at step %d and stopping", step)
                status = PREEMPTED
                break
        else:
            status = DONE
    except Exception as error:
        rundir.set_status(FAILED, step, error=f"{type(error).__name__}: {error}")
        raise
    finally:
        metrics_log.close()
    return Outcome(status, step, start.elapsed_s + time.perf_counter() - clock_start)


def train_and_evaluate(config, workdir: str, launched: float | None = None) -> str:
    """Trains (or resumes) the experiment of `config` in `workdir`; returns its final status.

    `launched`: when the launch began (a time.time(); launch.py gives its process's start), from
    which the start-up to the first step is timed; None: now.
    """
    # First of all: a preemption notice (SIGTERM, Ctrl-C) during the long start-up, the dataset's
    # preparation or the compilation, must still end the run cleanly, not kill it mid-way with
    # its status RUNNING for ever.
    preemption = PreemptionWatch()
    startup = _StartUp(time.time() if launched is None else launched)
    try:
        setup = preflight(config, RunDirectory(workdir))
        if setup is None:
            return DONE
        # One launch per workdir, held to the end; taken before anything is written, so a second
        # launch is refused with the workdir untouched.
        with setup.rundir.hold(config):
            setup.rundir.claim(config)  # only now: a config failing preflight leaves it untouched
            if setup.fine_tune is not None:
                setup.fine_tune.log()
                setup.rundir.record_fine_tune(setup.fine_tune.record())
            return _train(setup, preemption, startup)
    finally:
        startup.close()
        preemption.close()


def _train(setup: Setup, preemption: PreemptionWatch, startup: _StartUp) -> str:
    """Restores (or initializes) the state, compiles the steps and runs the loop; the status."""
    train_iterator = make_train_iterator(setup)
    checkpointer = Checkpointer(
        setup.rundir.checkpoints.absolute(), keep=setup.config.checkpoint.keep
    )
    try:
        start = restore_or_init(setup, checkpointer, train_iterator)
        # A notice during the start-up ends the run here, before compiling: the state is the
        # checkpoint's (or a fresh one), so there is nothing to save. With several processes the
        # first sync point asked for is the start step, which every process shares.
        if preemption.should_stop(start.step):
            log.warning("preempted before training; stopping at step %d", start.step)
            outcome = Outcome(PREEMPTED, start.step, start.elapsed_s)
        else:
            setup.rundir.record_environment(
                start.step,
                {"mesh": dict(setup.mesh.shape), "sharding": setup.config.sharding.to_dict()},
            )
            setup.rundir.set_status(RUNNING, start.step, total_steps=setup.plan.total_steps)
            compiled = compile_steps(setup, start.step)
            outcome = run_loop(
                setup, compiled, start, checkpointer, train_iterator, preemption, startup
            )
    finally:
        checkpointer.close()  # waits for the last checkpoint: only then is the status final
    setup.rundir.set_status(
        outcome.status,
        outcome.step,
        total_steps=setup.plan.total_steps,
        wall_time_s=outcome.wall_time_s,
    )
    return outcome.status

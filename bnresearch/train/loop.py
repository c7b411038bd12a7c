"""The training loop: from a config and a workdir to a trained, evaluated, checkpointed model.

Read top to bottom: validate, claim the workdir, the plan (every duration in steps, the
batch-size phases, the lr schedule), data, model and optimizer, the state (fresh or restored from
the latest checkpoint), compile once per batch size, then the loop: one update per iteration (k
train-step calls when gradients accumulate), the noise-scale measurement when due, periodic
logging, evaluation and checkpoints. The math lives in `steps.py`.
"""
import dataclasses
import functools
import logging
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bnresearch import data, models
from bnresearch.checkpoint.manager import Checkpointer, PreemptionWatch
from bnresearch.config.durations import parse_duration
from bnresearch.config.learning_rate import legw_warmup_epochs, phase_peak_lrs
from bnresearch.config.validation import validate_config
from bnresearch.optim.batch_size_schedule import (Cadence, Phase, Timeline, make_timeline,
                                                  schedule_from_config)
from bnresearch.optim.optimizers import make_optimizer
from bnresearch.optim.schedules import ScheduleSpec, make_schedule
from bnresearch.parallel.mesh import (batch_sharding, check_batch_size, global_batch, make_mesh,
                                      replicated)
from bnresearch.train import steps
from bnresearch.train.rundir import MetricsLog, RunDirectory
from bnresearch.train.state import TrainState, create_train_state
from bnresearch.errors import UsageError

log = logging.getLogger(__name__)

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every duration of the run in steps (updates), its batch-size phases and its lr schedule."""
    timeline: Timeline
    total_steps: int
    accumulation_steps: int      # train-step calls (micro-batches) per update
    multiplicity: int            # batch augmentation: images per distinct example in a batch
    log: Cadence
    eval: Cadence
    checkpoint: Cadence
    noise_scale: Cadence | None  # None: not measured
    schedule: ScheduleSpec

    @property
    def phases(self) -> tuple[Phase, ...]:
        """The phases the run reaches."""
        return tuple(phase for phase in self.timeline.phases if phase.first_step < self.total_steps)

    def phases_from(self, step: int) -> tuple[Phase, ...]:
        """The phases of the updates that follow `step` completed ones."""
        current = self.timeline.phase_at(step)
        return tuple(phase for phase in self.phases if phase.first_step >= current.first_step)

    def images_per_call(self, phase: Phase) -> int:
        """The batch one train-step call sees: a phase's batch size times the copies."""
        return phase.batch_size * self.multiplicity

    def batch_size_changes(self) -> tuple[tuple[int, int], ...]:
        """For the input pipeline: (first batch, batch size) of each phase after the first."""
        return tuple((phase.first_step * self.accumulation_steps, phase.batch_size)
                     for phase in self.phases[1:])


def _schedule_spec(config: ml_collections.ConfigDict, timeline: Timeline,
                   total_steps: int) -> ScheduleSpec:
    """The lr schedule in steps. The lr rule sees examples per update (batch_size x k, copies of
    batch augmentation not counted); LEGW stretches the warmup by the first phase's B/B0."""
    phases = timeline.phases
    warmup = config.schedule.warmup
    if config.schedule.warmup_rule == "legw":
        warmup_epochs = legw_warmup_epochs(parse_duration(warmup)[0],
                                           phases[0].examples_per_update, config.base_batch_size)
        warmup_steps = timeline.step_at_epoch(warmup_epochs)
    else:
        warmup_steps = timeline.step_at(warmup)
    return ScheduleSpec(
        phases=phases,
        peak_lrs=phase_peak_lrs(config.base_lr, config.base_batch_size, config.lr_scaling,
                                [phase.examples_per_update for phase in phases],
                                config.batch_size_schedule.lr),
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        decay=config.schedule.decay,
        boundaries=tuple(timeline.step_at(b) for b in config.schedule.boundaries),
        decay_factor=config.schedule.decay_factor,
        power=config.schedule.power,
        decay_rate=config.schedule.decay_rate,
    )


def make_plan(config: ml_collections.ConfigDict, num_train: int) -> Plan:
    timeline = make_timeline(num_train, config.batch_size, config.optimizer.accumulation_steps,
                             schedule_from_config(config.batch_size_schedule))
    total_steps = timeline.step_at(config.train_duration)
    if total_steps <= 0:
        raise UsageError(f"train_duration={config.train_duration!r} is less than one step")
    noise_scale = config.noise_scale
    return Plan(
        timeline=timeline,
        total_steps=total_steps,
        accumulation_steps=config.optimizer.accumulation_steps,
        multiplicity=config.batch_augmentation.multiplicity,
        log=timeline.every(config.log_every, minimum=1),
        eval=timeline.every(config.eval_every),
        checkpoint=timeline.every(config.checkpoint.every),
        noise_scale=timeline.every(noise_scale.every, minimum=1) if noise_scale.enabled else None,
        schedule=_schedule_spec(config, timeline, total_steps),
    )


def check_batches_split(config: ml_collections.ConfigDict, mesh) -> None:
    """Every batch a train step sees (each phase's, with batch augmentation's copies) and the eval
    batch must split evenly over the devices."""
    multiplicity = config.batch_augmentation.multiplicity
    batch_sizes = [("batch_size", config.batch_size)] + [
        (f"batch_size_schedule.batch_sizes[{index}]", size)
        for index, size in enumerate(config.batch_size_schedule.batch_sizes)]
    for name, size in batch_sizes:
        if multiplicity > 1:
            name = f"{name} x batch_augmentation.multiplicity ({size} x {multiplicity})"
        check_batch_size(name, size * multiplicity, mesh)
    check_batch_size("eval_batch_size", config.eval_batch_size, mesh)


def _check_noise_scale_sub_batches(build_model, sub_batches: int, batch_sizes) -> None:
    """The noise scale takes gradients on sub-batches of B / sub_batches images, each normalized
    on its own: the model must work at that size too (ghost batch norm's virtual batches must
    fit, batch statistics need more than one value per channel)."""
    sizes = sorted({size // sub_batches for size in batch_sizes})
    try:
        build_model(batch_sizes=sizes)
    except UsageError as error:
        raise UsageError(f"noise_scale.sub_batches={sub_batches} measures gradients on "
                         f"sub-batches of {', '.join(map(str, sizes))} images: {error}") from None


def _is_due(step: int, cadence: Cadence, total_steps: int) -> bool:
    return step == total_steps or cadence.is_due(step)


class _Progress:
    """One console line per logging step: loss, accuracy, lr, throughput and time left."""

    def __init__(self, total_steps: int, start_step: int):
        self._total = total_steps
        self._last_step, self._last_time = start_step, time.perf_counter()

    def report(self, step: int, scalars: dict, images_per_step: int) -> None:
        now = time.perf_counter()
        steps_per_s = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        eta = (self._total - step) / max(steps_per_s, 1e-9)
        log.info(
            "step %d/%d | loss %.4f | accuracy %.4f | lr %.5g | %.0f images/s | ETA %s",
            step, self._total, scalars["train/loss"], scalars["train/accuracy"],
            scalars["train/lr"], steps_per_s * images_per_step, _clock(eta))


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _summarize_train(window: list, first_step: int, calls_per_step: int):
    """Means over a logging window of train-step calls (the lr: its last value); also the first
    step at which a loss was not finite, if any."""
    fetched = jax.device_get(window)
    losses = np.array([[m[key] for key in ("loss", "aux_loss") if key in m] for m in fetched])
    bad = np.flatnonzero(~np.all(np.isfinite(losses), axis=1))
    diverged_at = first_step + int(bad[0]) // calls_per_step if bad.size else None
    scalars = {f"train/{key}": float(np.mean([m[key] for m in fetched]))
               for key in fetched[0] if key != "lr"}
    scalars["train/lr"] = float(fetched[-1]["lr"])
    return scalars, diverged_at


def _pending_to_json(window: list, window_start: int, measurements: list) -> dict:
    """The logging window a preemption interrupts, for the checkpoint: values with their dtypes,
    so the resumed run averages exactly the numbers the uninterrupted one would."""
    as_json = lambda metrics: {key: [np.asarray(value).item(), np.asarray(value).dtype.name]
                               for key, value in metrics.items()}
    return {"window_start": window_start,
            "window": [as_json(m) for m in jax.device_get(window)],
            "measurements": [[at_step, as_json(m)]
                             for at_step, m in jax.device_get(measurements)]}


def _pending_from_json(pending: dict) -> tuple[list, int, list]:
    from_json = lambda metrics: {key: np.asarray(value, dtype)
                                 for key, (value, dtype) in metrics.items()}
    return ([from_json(m) for m in pending["window"]], pending["window_start"],
            [(at_step, from_json(m)) for at_step, m in pending["measurements"]])


def evaluate(eval_step, state: TrainState, dataset, batch_size: int, mesh) -> dict:
    totals = None
    for local_batch in data.make_eval_iterator(
            dataset, batch_size=batch_size, process_index=jax.process_index(),
            process_count=jax.process_count()):
        sums = eval_step(state, global_batch(local_batch, mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    return {"eval/loss": float(totals["loss_sum"] / totals["count"]),
            "eval/accuracy": float(totals["correct_sum"] / totals["count"])}


def _batch_shapes(images: int, image_shape, mesh) -> dict:
    sharding = batch_sharding(mesh)
    return {"image": jax.ShapeDtypeStruct((images, *image_shape), jnp.float32, sharding=sharding),
            "label": jax.ShapeDtypeStruct((images,), jnp.int32, sharding=sharding)}


def _compile_per_batch_size(step_fn, *, batch_sizes, image_shape, abstract_state, state_sharding,
                            mesh, out_shardings, donate_state: bool) -> dict:
    """`step_fn(state, batch)` compiled ahead of time once per batch size, by size.

    A compiled executable never recompiles (a call with another shape is an error), so a
    batch-size schedule compiles each size once, up front, and the steady state cannot recompile.
    """
    jitted = jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding(mesh)),
                     out_shardings=out_shardings, donate_argnums=0 if donate_state else ())
    return {size: jitted.lower(abstract_state, _batch_shapes(size, image_shape, mesh)).compile()
            for size in sorted(set(batch_sizes))}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Trains (or resumes) the experiment of `config` in `workdir`; returns its final status."""
    validate_config(config)
    mesh = make_mesh()
    check_batches_split(config, mesh)
    rundir = RunDirectory(workdir)
    rundir.check(config)
    previous = rundir.status()
    if previous.get("status") == "done":
        log.info("%s already finished at step %d; nothing to do", workdir, previous["step"])
        return "done"

    dataset = data.load_dataset(config.dataset)
    plan = make_plan(config, dataset.info.num_train)
    # With the run's facts the build traces the model at every batch size a train step sees
    # (shapes only), so what a normalization cannot do at them fails here, before the workdir is
    # claimed.
    build_model = functools.partial(
        models.model_from_config, config.model, num_classes=dataset.info.num_classes,
        dtype=COMPUTE_DTYPES[config.compute_dtype],
        images_per_epoch=dataset.info.num_train * plan.multiplicity,
        accumulation_steps=plan.accumulation_steps, image_shape=dataset.info.image_shape)
    train_batch_sizes = [plan.images_per_call(phase) for phase in plan.phases]
    model = build_model(batch_sizes=train_batch_sizes, eval_batch_size=config.eval_batch_size)
    if plan.noise_scale is not None:
        _check_noise_scale_sub_batches(build_model, config.noise_scale.sub_batches,
                                       train_batch_sizes)
    learning_rate_fn = make_schedule(plan.schedule)
    optimizer = make_optimizer(config.optimizer, learning_rate_fn)
    rundir.claim(config)  # only now: a config that fails to set up leaves the workdir untouched

    # The state's shapes without computing it: a restore needs only these.
    image_shape = dataset.info.image_shape
    init = functools.partial(create_train_state, model, optimizer,
                             measure_noise_scale=plan.noise_scale is not None)
    first_images = _batch_shapes(plan.images_per_call(plan.phases[0]), image_shape, mesh)["image"]
    state_shapes = jax.eval_shape(init, jax.random.PRNGKey(0), first_images)
    state_sharding = jax.tree.map(lambda _: replicated(mesh), state_shapes)
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        state_shapes, state_sharding)

    def make_train_iterator():
        return data.make_train_iterator(
            dataset, seed=config.seed, batch_size=config.batch_size,
            batch_size_changes=plan.batch_size_changes(), multiplicity=plan.multiplicity,
            process_index=jax.process_index(), process_count=jax.process_count())

    train_iterator = make_train_iterator()
    checkpointer = Checkpointer(rundir.checkpoints.absolute(), keep=config.checkpoint.keep)
    start_step = checkpointer.latest_step()
    if start_step is None:
        start_step, elapsed, pending = 0, 0.0, None
        # Initialized on the first training batch, read from an iterator of its own so the
        # training stream is untouched.
        first_batch = global_batch(next(make_train_iterator()), mesh)
        key = jax.random.PRNGKey(config.seed)
        # It runs once, so it is compiled without backend optimization: XLA's optimizing the
        # random initializers costs seconds per layer (9 s of a small CNN's 20 s run on a CPU
        # core), and the values it gives agree with the optimized program's to rounding.
        init_once = jax.jit(init, out_shardings=state_sharding).lower(
            key, first_batch["image"]).compile({"xla_backend_optimization_level": 0})
        state = init_once(key, first_batch["image"])
    else:
        state, progress = checkpointer.restore(start_step, abstract_state, train_iterator)
        elapsed, pending = progress["elapsed_s"], progress.get("pending")
        log.info("resumed from the checkpoint at step %d", start_step)
    rundir.record_environment(start_step)
    rundir.set_status("running", start_step, total_steps=plan.total_steps)

    compile_start = time.perf_counter()
    compile_for_each_batch_size = functools.partial(
        _compile_per_batch_size,
        batch_sizes=[plan.images_per_call(phase) for phase in plan.phases_from(start_step)],
        image_shape=image_shape, abstract_state=abstract_state, state_sharding=state_sharding,
        mesh=mesh)
    train_steps = compile_for_each_batch_size(
        functools.partial(steps.train_step, model=model, optimizer=optimizer,
                          learning_rate_fn=learning_rate_fn,
                          label_smoothing=config.label_smoothing),
        out_shardings=(state_sharding, replicated(mesh)), donate_state=True)
    if plan.noise_scale is not None:
        noise_scale_steps = compile_for_each_batch_size(
            functools.partial(steps.noise_scale_step, model=model,
                              sub_batches=config.noise_scale.sub_batches,
                              ema_decay=config.noise_scale.ema_decay,
                              label_smoothing=config.label_smoothing),
            out_shardings=replicated(mesh), donate_state=False)
    log.info("compiled the train step for batch size(s) %s in %.1f s",
             ", ".join(map(str, train_steps)), time.perf_counter() - compile_start)
    eval_step = jax.jit(functools.partial(steps.eval_step, model=model),
                        out_shardings=replicated(mesh))

    metrics_log = MetricsLog(rundir, resume_step=start_step)
    progress_log = _Progress(plan.total_steps, start_step)
    preemption = PreemptionWatch()
    # A preemption between logging steps saves the open logging window with the checkpoint, so
    # the resumed run logs exactly the records of one that never stopped.
    window, window_start, measurements = (_pending_from_json(pending) if pending
                                          else ([], start_step + 1, []))
    status, step = "running", start_step
    clock_start = time.perf_counter()

    def save(at_step, **extra):
        checkpointer.save(at_step, state, train_iterator,
                          {"elapsed_s": elapsed + time.perf_counter() - clock_start, **extra})

    try:
        while step < plan.total_steps:
            phase = plan.timeline.phase_at(step)
            images = plan.images_per_call(phase)
            measure = plan.noise_scale is not None and plan.noise_scale.is_due(step + 1)
            for call in range(plan.accumulation_steps):
                batch = global_batch(next(train_iterator), mesh)
                if measure and call == 0:
                    # On the (first micro-)batch of update step + 1, before it is applied.
                    noise_scale, noise_scalars = noise_scale_steps[images](state, batch)
                    state = state.replace(noise_scale=noise_scale)
                    measurements.append((step + 1, noise_scalars))
                state, step_metrics = train_steps[images](state, batch)
                window.append(step_metrics)
            step += 1
            must_save = _is_due(step, plan.checkpoint, plan.total_steps)
            preempted = preemption.should_stop(step)
            if _is_due(step, plan.log, plan.total_steps) or must_save:
                scalars, diverged_at = _summarize_train(window, window_start,
                                                        plan.accumulation_steps)
                window, window_start = [], step + 1
                for at_step, values in jax.device_get(measurements):
                    metrics_log.write(at_step, {f"train/{k}": v for k, v in values.items()})
                measurements = []
                scalars["train/batch_size"] = phase.examples_per_update
                scalars["train/epoch"] = plan.timeline.epoch_at(step)
                metrics_log.write(step, scalars)
                if diverged_at is not None:
                    log.warning("loss is not finite at step %d: the run diverged", diverged_at)
                    status, step = "diverged", diverged_at
                    break
                progress_log.report(step, scalars, phase.examples_per_update * plan.multiplicity)
            if _is_due(step, plan.eval, plan.total_steps):
                eval_scalars = evaluate(eval_step, state, dataset, config.eval_batch_size, mesh)
                metrics_log.write(step, eval_scalars)
                log.info("step %d | eval loss %.4f | eval accuracy %.4f", step,
                             eval_scalars["eval/loss"], eval_scalars["eval/accuracy"])
            if must_save:
                save(step)
            elif preempted:
                save(step, pending=_pending_to_json(window, window_start, measurements))
            if preempted:
                log.warning("preempted: saved the checkpoint at step %d and stopping", step)
                status = "preempted"
                break
        else:
            status = "done"
    except Exception as error:
        rundir.set_status("failed", step, error=f"{type(error).__name__}: {error}")
        raise
    finally:
        metrics_log.close()
        checkpointer.close()
        preemption.close()
    rundir.set_status(status, step, total_steps=plan.total_steps,
                      wall_time_s=elapsed + time.perf_counter() - clock_start)
    return status

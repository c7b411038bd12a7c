"""The training loop: from a config and a workdir to a trained, evaluated, checkpointed model.

Read top to bottom: validate, claim the workdir, data, model and optimizer, the state (fresh or
restored from the latest checkpoint), compile, then the loop with its periodic logging,
evaluation and checkpoints. The math lives in `steps.py`.
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
from bnresearch.config.durations import to_steps
from bnresearch.config.learning_rate import scaled_learning_rate
from bnresearch.config.validation import validate_config
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
    """Every duration of the run in steps, and the learning-rate schedule."""
    steps_per_epoch: int
    total_steps: int
    log_every: int
    eval_every: int        # 0: only at the end
    checkpoint_every: int  # 0: only at the end
    schedule: ScheduleSpec


def make_plan(config: ml_collections.ConfigDict, num_train: int) -> Plan:
    steps_per_epoch = num_train // config.batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"batch_size={config.batch_size} exceeds the {num_train} training "
                         f"examples of {config.dataset.name}; use at most {num_train}")
    steps = functools.partial(to_steps, steps_per_epoch=steps_per_epoch)
    total_steps = steps(config.train_duration)
    if total_steps <= 0:
        raise UsageError(f"train_duration={config.train_duration!r} is less than one step")
    return Plan(
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        log_every=max(steps(config.log_every), 1),
        eval_every=steps(config.eval_every),
        checkpoint_every=steps(config.checkpoint.every),
        schedule=ScheduleSpec(
            peak_lr=scaled_learning_rate(config.base_lr, config.batch_size,
                                         config.base_batch_size, config.lr_scaling),
            total_steps=total_steps,
            warmup_steps=steps(config.schedule.warmup),
            decay=config.schedule.decay,
            boundaries=tuple(steps(b) for b in config.schedule.boundaries),
            decay_factor=config.schedule.decay_factor,
        ),
    )


def _is_due(step: int, every: int, total_steps: int) -> bool:
    return step == total_steps or (every > 0 and step % every == 0)


class _Progress:
    """One console line per logging step: loss, accuracy, lr, throughput and time left."""

    def __init__(self, total_steps: int, batch_size: int, start_step: int):
        self._total, self._batch = total_steps, batch_size
        self._last_step, self._last_time = start_step, time.perf_counter()

    def report(self, step: int, scalars: dict) -> None:
        now = time.perf_counter()
        steps_per_s = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        eta = (self._total - step) / max(steps_per_s, 1e-9)
        log.info(
            "step %d/%d | loss %.4f | accuracy %.4f | lr %.5g | %.0f images/s | ETA %s",
            step, self._total, scalars["train/loss"], scalars["train/accuracy"],
            scalars["train/lr"], steps_per_s * self._batch, _clock(eta))


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _summarize_train(window: list, first_step: int):
    """Means over a logging window (the lr: its last value); also the first step at which a
    loss was not finite, if any."""
    fetched = jax.device_get(window)
    losses = np.array([[m[key] for key in ("loss", "aux_loss") if key in m] for m in fetched])
    bad = np.flatnonzero(~np.all(np.isfinite(losses), axis=1))
    diverged_at = first_step + int(bad[0]) if bad.size else None
    scalars = {f"train/{key}": float(np.mean([m[key] for m in fetched]))
               for key in fetched[0] if key != "lr"}
    scalars["train/lr"] = float(fetched[-1]["lr"])
    return scalars, diverged_at


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Trains (or resumes) the experiment of `config` in `workdir`; returns its final status."""
    validate_config(config)
    mesh = make_mesh()
    check_batch_size("batch_size", config.batch_size, mesh)
    check_batch_size("eval_batch_size", config.eval_batch_size, mesh)
    rundir = RunDirectory(workdir)
    rundir.check(config)
    previous = rundir.status()
    if previous.get("status") == "done":
        log.info("%s already finished at step %d; nothing to do", workdir, previous["step"])
        return "done"

    dataset = data.load_dataset(config.dataset)
    plan = make_plan(config, dataset.info.num_train)
    # With the run's facts the build traces the model at its batch sizes (shapes only), so what
    # a normalization cannot do at them fails here, before the workdir is claimed.
    model = models.model_from_config(
        config.model, num_classes=dataset.info.num_classes,
        dtype=COMPUTE_DTYPES[config.compute_dtype], batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size, train_size=dataset.info.num_train,
        image_shape=dataset.info.image_shape)
    learning_rate_fn = make_schedule(plan.schedule)
    optimizer = make_optimizer(config.optimizer, learning_rate_fn)
    rundir.claim(config)  # only now: a config that fails to set up leaves the workdir untouched

    sharded_batch = batch_sharding(mesh)
    batch_shapes = {
        "image": jax.ShapeDtypeStruct((config.batch_size, *dataset.info.image_shape),
                                      jnp.float32, sharding=sharded_batch),
        "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=sharded_batch),
    }
    # The state's shapes without computing it: a restore needs only these.
    init = functools.partial(create_train_state, model, optimizer)
    state_shapes = jax.eval_shape(init, jax.random.PRNGKey(0), batch_shapes["image"])
    state_sharding = jax.tree.map(lambda _: replicated(mesh), state_shapes)
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        state_shapes, state_sharding)

    def make_train_iterator():
        return data.make_train_iterator(
            dataset, seed=config.seed, batch_size=config.batch_size,
            process_index=jax.process_index(), process_count=jax.process_count())

    train_iterator = make_train_iterator()
    checkpointer = Checkpointer(rundir.checkpoints.absolute(), keep=config.checkpoint.keep)
    start_step = checkpointer.latest_step()
    if start_step is None:
        start_step, elapsed = 0, 0.0
        # Initialized on the first training batch, read from an iterator of its own so the
        # training stream is untouched.
        first_batch = global_batch(next(make_train_iterator()), mesh)
        state = jax.jit(init, out_shardings=state_sharding)(jax.random.PRNGKey(config.seed),
                                                            first_batch["image"])
    else:
        state, progress = checkpointer.restore(start_step, abstract_state, train_iterator)
        elapsed = progress["elapsed_s"]
        log.info("resumed from the checkpoint at step %d", start_step)
    rundir.record_environment(start_step)
    rundir.set_status("running", start_step, total_steps=plan.total_steps)

    compile_start = time.perf_counter()
    train_step = jax.jit(
        functools.partial(steps.train_step, model=model, optimizer=optimizer,
                          learning_rate_fn=learning_rate_fn,
                          label_smoothing=config.label_smoothing),
        in_shardings=(state_sharding, sharded_batch),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=0,
    ).lower(abstract_state, batch_shapes).compile()
    log.info("compiled the train step in %.1f s", time.perf_counter() - compile_start)
    eval_step = jax.jit(functools.partial(steps.eval_step, model=model),
                        out_shardings=replicated(mesh))

    metrics_log = MetricsLog(rundir, resume_step=start_step)
    progress_log = _Progress(plan.total_steps, config.batch_size, start_step)
    preemption = PreemptionWatch()
    window, window_start = [], start_step + 1
    status, step = "running", start_step
    clock_start = time.perf_counter()

    def save(at_step):
        checkpointer.save(at_step, state, train_iterator,
                          {"elapsed_s": elapsed + time.perf_counter() - clock_start})

    try:
        while step < plan.total_steps:
            batch = global_batch(next(train_iterator), mesh)
            state, step_metrics = train_step(state, batch)
            step += 1
            window.append(step_metrics)
            must_save = _is_due(step, plan.checkpoint_every, plan.total_steps)
            preempted = preemption.should_stop(step)
            if _is_due(step, plan.log_every, plan.total_steps) or must_save or preempted:
                scalars, diverged_at = _summarize_train(window, window_start)
                window, window_start = [], step + 1
                metrics_log.write(step, scalars)
                if diverged_at is not None:
                    log.warning("loss is not finite at step %d: the run diverged", diverged_at)
                    status, step = "diverged", diverged_at
                    break
                progress_log.report(step, scalars)
            if _is_due(step, plan.eval_every, plan.total_steps):
                eval_scalars = evaluate(eval_step, state, dataset, config.eval_batch_size, mesh)
                metrics_log.write(step, eval_scalars)
                log.info("step %d | eval loss %.4f | eval accuracy %.4f", step,
                             eval_scalars["eval/loss"], eval_scalars["eval/accuracy"])
            if must_save or preempted:
                save(step)
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

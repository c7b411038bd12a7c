"""Batch-size schedules, and every duration of a run resolved through them.

Smith, Kindermans, Ying & Le, "Don't Decay the Learning Rate, Increase the Batch Size", ICLR 2018,
arXiv:1711.00489: where a schedule would divide the lr by a factor, multiply the batch size by it.

A run is a sequence of phases. Phase 0 starts at epoch 0 with ``batch_size``; each epoch of
``batch_size_schedule.epochs`` starts a phase with the matching entry of ``.batch_sizes``. A
phase's step is one update of ``examples_per_update`` = batch size x accumulation steps, and
within the phase an epoch is ``num_train // examples_per_update`` updates: exactly the steps per
epoch of a run with that batch size throughout, so a schedule with no entries resolves every
duration as before. Hence:

- A point in epochs (train_duration, warmup, step-decay boundaries, the phase starts themselves)
  is the first step of the phase holding that epoch plus round(epochs into the phase x its steps
  per epoch). A point in steps is that step.
- An interval in epochs (log_every, eval_every, checkpoint.every, noise_scale.every) is
  round(E x steps per epoch) steps of the current phase, counted afresh from each phase's first
  step, which is therefore always due. An interval in steps counts from step 0.

The data stream does not skip or restart at a phase: the first batch of a phase begins at the
stream position right after the previous phase's last batch (see ``bnresearch.data.pipeline``),
so every position is a pure function of the step and resume is exact in any phase.
"""

import dataclasses
import math

from bnresearch.config.durations import parse_duration
from bnresearch.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Phase:
    start_epoch: float
    batch_size: int  # distinct examples per train-step call (a micro-batch, if k > 1)
    examples_per_update: int  # batch_size x accumulation steps: what epochs and the lr rule count
    first_step: int  # updates completed before the phase starts
    steps_per_epoch: int  # num_train // examples_per_update


@dataclasses.dataclass(frozen=True)
class Cadence:
    """The steps at which a periodic action is due."""

    starts: tuple[tuple[int, int], ...]  # (first step, interval in steps; 0 means never)

    def is_due(self, step: int) -> bool:
        first, interval = next(start for start in reversed(self.starts) if start[0] <= step)
        return interval > 0 and (step - first) % interval == 0

    def next_due(self, step: int) -> int | None:
        """The first step after `step` at which the action is due; None if it never is again."""
        ends = [first for first, _ in self.starts[1:]] + [math.inf]
        for (first, interval), end in zip(self.starts, ends):
            if interval == 0 or end <= step + 1:
                continue
            after = max(step + 1, first)
            due = first + (after - first + interval - 1) // interval * interval
            if due < end:
                return due
        return None


@dataclasses.dataclass(frozen=True)
class Timeline:
    phases: tuple[Phase, ...]

    def phase_at(self, step: int) -> Phase:
        """The phase of the update that follows `step` completed updates."""
        return next(phase for phase in reversed(self.phases) if phase.first_step <= step)

    def step_at_epoch(self, epoch: float) -> int:
        phase = next(phase for phase in reversed(self.phases) if phase.start_epoch <= epoch)
        return phase.first_step + int(round((epoch - phase.start_epoch) * phase.steps_per_epoch))

    def step_at(self, duration: str) -> int:
        """The step a duration from the start of training reaches ("500 steps", "30 epochs")."""
        amount, unit = parse_duration(duration)
        return int(amount) if unit == "steps" else self.step_at_epoch(amount)

    def epoch_at(self, step: int) -> float:
        """Epochs trained after `step` updates (the inverse of `step_at_epoch`)."""
        phase = self.phase_at(step)
        return phase.start_epoch + (step - phase.first_step) / phase.steps_per_epoch

    def every(self, duration: str, minimum: int = 0) -> Cadence:
        """The cadence of an interval, at least `minimum` steps long."""
        amount, unit = parse_duration(duration)
        if unit == "steps":
            return Cadence(((0, max(int(amount), minimum)),))
        return Cadence(
            tuple(
                (phase.first_step, max(int(round(amount * phase.steps_per_epoch)), minimum))
                for phase in self.phases
            )
        )


def check_batch_size_schedule(schedule) -> None:
    """Raises UsageError unless `schedule` is ((epoch, batch_size), ...) with epochs increasing
    from above 0 and positive whole batch sizes."""
    previous = 0
    for epoch, batch_size in schedule:
        if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or epoch <= previous:
            raise UsageError(
                f"batch_size_schedule.epochs must increase from above 0, got {epoch!r} after "
                f"{previous!r}; batch_size is the batch size from epoch 0"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise UsageError(
                f"batch_size_schedule.batch_sizes entry {batch_size!r} (from epoch "
                f"{epoch}) must be a positive whole number"
            )
        previous = epoch


def schedule_from_config(config) -> tuple[tuple[float, int], ...]:
    """The (epoch, batch size) pairs of the config's `batch_size_schedule` block, checked."""
    epochs, batch_sizes = tuple(config.epochs), tuple(config.batch_sizes)
    if len(epochs) != len(batch_sizes):
        raise UsageError(
            f"batch_size_schedule has {len(epochs)} epochs but {len(batch_sizes)} "
            "batch_sizes; give one batch size per epoch"
        )
    schedule = tuple(zip(epochs, batch_sizes))
    check_batch_size_schedule(schedule)
    return schedule


def make_timeline(
    num_train: int, batch_size: int, accumulation_steps: int = 1, schedule=()
) -> Timeline:
    """The phases of a run on `num_train` examples; UsageError if a batch exceeds the data or a
    phase would take no step."""
    check_batch_size_schedule(schedule)
    phases = []
    for start_epoch, size in ((0, batch_size), *schedule):
        examples_per_update = size * accumulation_steps
        steps_per_epoch = num_train // examples_per_update
        if steps_per_epoch == 0:
            raise UsageError(
                f"a batch of {size} x {accumulation_steps} accumulation steps = "
                f"{examples_per_update} examples exceeds the {num_train} training examples; use "
                f"at most {num_train} per update"
            )
        first_step = 0
        if phases:
            first_step = Timeline(tuple(phases)).step_at_epoch(start_epoch)
            if first_step <= phases[-1].first_step:
                raise UsageError(
                    f"batch_size_schedule: the phase from epoch {start_epoch} starts "
                    "before the previous phase takes a step; space the epochs apart"
                )
        phases.append(Phase(start_epoch, size, examples_per_update, first_step, steps_per_epoch))
    return Timeline(tuple(phases))

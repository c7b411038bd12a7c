"""The plan of a run: every duration, batch size, learning rate and cadence, resolved once.

`make_plan(config, num_train)` turns the config's durations ("30 epochs", "500 steps"), its
batch-size phases, batch augmentation's copies, gradient accumulation, the lr rule and schedule,
and the cadences of logging, evaluation, checkpoints and measurements into numbers of steps
(optimizer updates) and images, and groups the updates into compiled calls (`steps_per_call`).
Everything downstream (preflight's checks, the model's build facts, the input pipeline, the
compiled steps, the loop) reads the plan and recomputes none of it.

How durations become steps under a batch-size schedule is `optim.batch_size_schedule.Timeline`'s
business; how a batch size scales the lr is `optim.learning_rate`'s; the schedule's shape is
`optim.schedules`'. This module is where they meet the config.
"""

import dataclasses

import ml_collections

from bnresearch.config.durations import parse_duration
from bnresearch.errors import UsageError
from bnresearch.optim.batch_size_schedule import (
    Cadence,
    Phase,
    Timeline,
    make_timeline,
    schedule_from_config,
)
from bnresearch.optim.learning_rate import legw_warmup_epochs, phase_peak_lrs
from bnresearch.optim.schedules import ScheduleSpec
from bnresearch.train.probes import PROBES


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every duration of the run in steps (updates), its batch-size phases and its lr schedule."""

    timeline: Timeline
    total_steps: int
    accumulation_steps: int  # train-step calls (micro-batches) per update
    steps_per_call: int  # K: updates per compiled call, at most
    multiplicity: int  # batch augmentation: images per distinct example in a batch
    images_per_epoch: int  # training images of an epoch, batch augmentation's copies too
    log: Cadence
    eval: Cadence
    checkpoint: Cadence
    noise_scale: Cadence | None  # None: not measured
    schedule: ScheduleSpec
    # The measurements that keep no state (train/probes.py), by name: those switched on.
    probes: dict[str, Cadence] = dataclasses.field(default_factory=dict)

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

    @property
    def train_batch_sizes(self) -> tuple[int, ...]:
        """The batch of a train-step call in each phase the run reaches."""
        return self.train_batch_sizes_from(0)

    def train_batch_sizes_from(self, step: int) -> tuple[int, ...]:
        """The batch of a train-step call in each phase still to come after `step` updates."""
        return tuple(self.images_per_call(phase) for phase in self.phases_from(step))

    def batch_size_changes(self) -> tuple[tuple[int, int], ...]:
        """For the input pipeline: (first batch, batch size) of each phase after the first."""
        return tuple(
            (phase.first_step * self.accumulation_steps, phase.batch_size)
            for phase in self.phases[1:]
        )

    def is_due(self, cadence: Cadence, step: int) -> bool:
        """Whether a periodic action is due after `step` updates (always at the last one)."""
        return step == self.total_steps or cadence.is_due(step)

    def updates_in_call(self, step: int) -> int:
        """The updates of the compiled call that follows `step` completed ones: K, or 1 where K
        would pass the next stop (`_next_stop`).

        The rest of a stretch between two stops that K does not divide is run one update per
        call, by the train step itself: at most two programs per batch size (K updates and 1),
        where calls compiled for each rest could need K - 1 more; and no cadence has to be a
        multiple of K (a duration in epochs seldom is).
        """
        return self.steps_per_call if self._next_stop(step) - step >= self.steps_per_call else 1

    def call_kinds_from(self, step: int) -> set[tuple[int, int]]:
        """(images per train step, updates) of the calls after `step` completed updates: what
        to compile, once, before the loop starts."""
        kinds = set()
        while step < self.total_steps:
            stop = self._next_stop(step)
            images = self.images_per_call(self.timeline.phase_at(step))
            full_calls, rest = divmod(stop - step, self.steps_per_call)
            if full_calls:
                kinds.add((images, self.steps_per_call))
            if rest:
                kinds.add((images, 1))
            step = stop
        return kinds

    def _next_stop(self, step: int) -> int:
        """The first step after `step` at which a call must end: something is due after it
        (logging, evaluation, a checkpoint, the end), a batch-size phase starts, or the noise
        scale or a probe is measured before the update that follows it."""
        stops = [self.total_steps]
        stops += [phase.first_step for phase in self.timeline.phases if phase.first_step > step]
        stops += [cadence.next_due(step) for cadence in (self.log, self.eval, self.checkpoint)]
        measured_before = [self.noise_scale] if self.noise_scale is not None else []
        for cadence in measured_before + list(self.probes.values()):
            measured = cadence.next_due(step + 1)
            stops.append(None if measured is None else measured - 1)
        return min(stop for stop in stops if stop is not None)


def configured_batch_sizes(config: ml_collections.ConfigDict) -> tuple[tuple[str, int], ...]:
    """(field, images per train-step call) of every batch size the config names: `batch_size`
    and each entry of `batch_size_schedule`, times batch augmentation's copies. Needs no data, so
    the checks that depend on batch sizes alone run before the dataset is opened."""
    multiplicity = config.batch_augmentation.multiplicity
    named = [("batch_size", config.batch_size)] + [
        (f"batch_size_schedule.batch_sizes[{index}]", size)
        for index, size in enumerate(config.batch_size_schedule.batch_sizes)
    ]
    if multiplicity == 1:
        return tuple(named)
    return tuple(
        (
            f"{field} x batch_augmentation.multiplicity ({size} x {multiplicity})",
            size * multiplicity,
        )
        for field, size in named
    )


def _lr_schedule(
    config: ml_collections.ConfigDict, timeline: Timeline, total_steps: int
) -> ScheduleSpec:
    """The lr schedule in steps. The lr rule sees examples per update (batch_size x k, copies of
    batch augmentation not counted); LEGW stretches the warmup by the first phase's B/B0."""
    phases = timeline.phases
    warmup = config.schedule.warmup
    if config.schedule.warmup_rule == "legw":
        warmup_epochs = legw_warmup_epochs(
            parse_duration(warmup)[0], phases[0].examples_per_update, config.base_batch_size
        )
        warmup_steps = timeline.step_at_epoch(warmup_epochs)
    else:
        warmup_steps = timeline.step_at(warmup)
    return ScheduleSpec(
        phases=phases,
        peak_lrs=phase_peak_lrs(
            config.base_lr,
            config.base_batch_size,
            config.lr_scaling,
            [phase.examples_per_update for phase in phases],
            config.batch_size_schedule.lr,
        ),
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        decay=config.schedule.decay,
        boundaries=tuple(timeline.step_at(b) for b in config.schedule.boundaries),
        decay_factor=config.schedule.decay_factor,
        power=config.schedule.power,
        decay_rate=config.schedule.decay_rate,
    )


def make_plan(config: ml_collections.ConfigDict, num_train: int) -> Plan:
    """The plan of `config` on a training split of `num_train` examples; UsageError if a batch
    exceeds the data or the run would take no step."""
    timeline = make_timeline(
        num_train,
        config.batch_size,
        config.optimizer.accumulation_steps,
        schedule_from_config(config.batch_size_schedule),
    )
    total_steps = timeline.step_at(config.train_duration)
    if total_steps <= 0:
        raise UsageError(f"train_duration={config.train_duration!r} is less than one step")
    noise_scale = config.noise_scale
    probes = {
        name: timeline.every(config[name].every, minimum=1)
        for name in PROBES
        if config[name].enabled
    }
    return Plan(
        timeline=timeline,
        total_steps=total_steps,
        accumulation_steps=config.optimizer.accumulation_steps,
        steps_per_call=config.steps_per_call,
        multiplicity=config.batch_augmentation.multiplicity,
        images_per_epoch=num_train * config.batch_augmentation.multiplicity,
        log=timeline.every(config.log_every, minimum=1),
        eval=timeline.every(config.eval_every),
        checkpoint=timeline.every(config.checkpoint.every),
        noise_scale=timeline.every(noise_scale.every, minimum=1) if noise_scale.enabled else None,
        schedule=_lr_schedule(config, timeline, total_steps),
        probes=probes,
    )

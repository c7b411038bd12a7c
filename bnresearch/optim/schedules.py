"""Learning-rate schedules: the phase's peak lr x a warmup x a decay, one pure function of the
number of updates completed.

The schedule is handed to the optimizer and also evaluated inside the train step, so the lr that
is logged is the lr that was applied (with gradient accumulation and batch-size schedules too:
both count updates).

Warmup: linear from peak/W at step 0 to the peak at step W - 1 (Goyal et al., "Accurate, Large
Minibatch SGD", 2017, arXiv:1706.02677); starting at peak/W rather than 0 keeps the first update
from being wasted. Decays, with t = step - warmup_steps and progress f = clip(t / (total_steps -
warmup_steps), 0, 1):
- constant: 1.
- step: decay_factor ** (boundaries reached) (Goyal et al.: x0.1 at epochs 30, 60, 80).
- cosine: (1 + cos(pi f)) / 2 (Loshchilov & Hutter, "SGDR", ICLR 2017, arXiv:1608.03983).
- polynomial: (1 - f) ** power (power 2 in You et al.'s LARS runs, arXiv:1708.03888).
- exponential: decay_rate ** (epochs since warmup ended), continuous rather than staircase;
  epochs are counted phase by phase, so the rate per epoch holds under batch-size schedules.
Batch-size schedules: each phase has its own peak lr (``bnresearch.optim.learning_rate``).
"""

import dataclasses
from typing import Callable

import jax.numpy as jnp

from bnresearch.errors import UsageError
from bnresearch.optim.batch_size_schedule import Phase

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
    """A schedule in steps: what `make_schedule` needs, resolved from the config."""

    phases: tuple[Phase, ...]  # of the batch-size schedule: one for a fixed batch size
    peak_lrs: tuple[float, ...]  # the peak lr of each phase
    total_steps: int
    warmup_steps: int = 0
    decay: str = "constant"
    boundaries: tuple[int, ...] = ()  # absolute steps, for the step decay
    decay_factor: float = 0.1  # step
    power: float = 2.0  # polynomial
    decay_rate: float = 0.97  # exponential: factor per epoch


def _progress(step, spec):
    decay_steps = max(spec.total_steps - spec.warmup_steps, 1)
    return jnp.clip((step - spec.warmup_steps) / decay_steps, 0.0, 1.0)


def _phase_value(step, spec, values):
    """values[i] of the phase the update after `step` completed updates belongs to."""
    first_steps = jnp.asarray([phase.first_step for phase in spec.phases], jnp.float32)
    index = jnp.sum(step >= first_steps) - 1
    return jnp.asarray(values, jnp.float32)[index]


def _epochs(step, spec):
    start = _phase_value(step, spec, [phase.start_epoch for phase in spec.phases])
    first = _phase_value(step, spec, [phase.first_step for phase in spec.phases])
    per_epoch = _phase_value(step, spec, [phase.steps_per_epoch for phase in spec.phases])
    return start + (step - first) / per_epoch


def _constant(step, spec):
    del step, spec
    return 1.0


def _step(step, spec):
    passed = sum((step >= boundary).astype(jnp.float32) for boundary in spec.boundaries)
    return spec.decay_factor**passed


def _cosine(step, spec):
    return 0.5 * (1.0 + jnp.cos(jnp.pi * _progress(step, spec)))


def _polynomial(step, spec):
    return (1.0 - _progress(step, spec)) ** spec.power


def _exponential(step, spec):
    warmup_end = jnp.asarray(spec.warmup_steps, jnp.float32)
    epochs = jnp.maximum(_epochs(step, spec) - _epochs(warmup_end, spec), 0.0)
    return spec.decay_rate**epochs


DECAYS = {
    "constant": _constant,
    "step": _step,
    "cosine": _cosine,
    "polynomial": _polynomial,
    "exponential": _exponential,
}


def _warmup(step, spec):
    if spec.warmup_steps <= 0:
        return 1.0
    return jnp.minimum(1.0, (step + 1.0) / spec.warmup_steps)


def make_schedule(spec: ScheduleSpec) -> Schedule:
    if spec.decay not in DECAYS:
        raise UsageError(f"unknown schedule.decay {spec.decay!r}; valid: {', '.join(DECAYS)}")
    decay = DECAYS[spec.decay]

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        return _phase_value(step, spec, spec.peak_lrs) * _warmup(step, spec) * decay(step, spec)

    return schedule

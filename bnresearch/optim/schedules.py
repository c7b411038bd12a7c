"""Learning-rate schedules: linear warmup, then a decay, as one pure function of the step.

The schedule is handed to the optimizer and also evaluated inside the train step, so the lr that
is logged is the lr that was applied.
"""
import dataclasses
from typing import Callable

import jax.numpy as jnp
from bnresearch.errors import UsageError

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
    """A schedule in steps: what `make_schedule` needs, resolved from the config."""
    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    decay: str = "constant"
    boundaries: tuple[int, ...] = ()  # absolute steps, for the step decay
    decay_factor: float = 0.1


def _constant(step, spec):
    del step, spec
    return 1.0


def _cosine(step, spec):
    """Half a cosine from 1 to 0 over the steps after warmup (Loshchilov & Hutter 2017)."""
    decay_steps = max(spec.total_steps - spec.warmup_steps, 1)
    fraction = jnp.clip((step - spec.warmup_steps) / decay_steps, 0.0, 1.0)
    return 0.5 * (1.0 + jnp.cos(jnp.pi * fraction))


def _step(step, spec):
    """Multiplied by `decay_factor` at every boundary reached."""
    passed = sum((step >= boundary).astype(jnp.float32) for boundary in spec.boundaries)
    return spec.decay_factor ** passed


DECAYS = {"constant": _constant, "cosine": _cosine, "step": _step}


def _warmup(step, spec):
    """Linear from peak/warmup at the first step to the peak at step `warmup_steps - 1`.

    Starting at peak/warmup rather than 0 keeps the first update from being wasted.
    """
    if spec.warmup_steps <= 0:
        return 1.0
    return jnp.minimum(1.0, (step + 1.0) / spec.warmup_steps)


def make_schedule(spec: ScheduleSpec) -> Schedule:
    if spec.decay not in DECAYS:
        raise UsageError(f"unknown schedule.decay {spec.decay!r}; valid: {', '.join(DECAYS)}")
    decay = DECAYS[spec.decay]

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        return spec.peak_lr * _warmup(step, spec) * decay(step, spec)

    return schedule

"""Each schedule's lr at chosen steps against its formula, written out by hand."""

import math

import numpy as np
import pytest

from bnresearch.config.defaults import base_config
from bnresearch.config.ranges import check_ranges
from bnresearch.errors import UsageError
from bnresearch.optim.batch_size_schedule import make_timeline
from bnresearch.optim.schedules import ScheduleSpec, make_schedule

# 100 examples in batches of 10: 10 steps per epoch.
ONE_PHASE = make_timeline(num_train=100, batch_size=10).phases
# From epoch 3 (step 30) batches of 50: 2 steps per epoch.
TWO_PHASES = make_timeline(num_train=100, batch_size=10, schedule=((3, 50),)).phases


def values(spec, steps):
    schedule = make_schedule(spec)
    return np.array([float(schedule(s)) for s in steps])


def spec(peak_lr=1.0, phases=ONE_PHASE, **fields):
    return ScheduleSpec(phases=phases, peak_lrs=(peak_lr,) * len(phases), **fields)


def test_constant_with_linear_warmup():
    lrs = values(spec(0.4, total_steps=100, warmup_steps=4), [0, 1, 2, 3, 4, 50, 99])
    np.testing.assert_allclose(lrs, [0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4], rtol=1e-6)


def test_step_decay_at_boundaries():
    lrs = values(
        spec(0.1, total_steps=100, decay="step", boundaries=(30, 60), decay_factor=0.2),
        [0, 29, 30, 59, 60, 99],
    )
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.02, 0.02, 0.004, 0.004], rtol=1e-6)


def test_cosine_after_warmup():
    steps = [10, 35, 60, 85, 110]
    expected = [0.5 * (1 + math.cos(math.pi * (s - 10) / 100)) for s in steps]
    np.testing.assert_allclose(
        values(spec(total_steps=110, warmup_steps=10, decay="cosine"), steps),
        expected,
        rtol=1e-5,
        atol=1e-7,
    )


def test_polynomial_after_warmup():
    steps = [0, 10, 30, 60, 109, 110]
    expected = [0.5 / 10] + [0.5 * (1 - (s - 10) / 100) ** 3 for s in steps[1:]]
    lrs = values(spec(0.5, total_steps=110, warmup_steps=10, decay="polynomial", power=3.0), steps)
    np.testing.assert_allclose(lrs, expected, rtol=1e-5, atol=1e-8)


def test_exponential_decays_per_epoch_after_warmup():
    # 10 steps per epoch, warmup 5 steps: lr = peak * rate^((step - 5) / 10) from step 5 on.
    steps = [5, 15, 25, 40, 99]
    lrs = values(
        spec(0.2, total_steps=100, warmup_steps=5, decay="exponential", decay_rate=0.5), steps
    )
    np.testing.assert_allclose(lrs, [0.2 * 0.5 ** ((s - 5) / 10) for s in steps], rtol=1e-5)


def test_exponential_counts_epochs_phase_by_phase():
    # Phase 0: 10 steps per epoch up to step 30 (epoch 3); phase 1: 2 steps per epoch, so step 34
    # is epoch 5 and step 41 epoch 8.5.
    lrs = values(
        spec(1.0, phases=TWO_PHASES, total_steps=50, decay="exponential", decay_rate=0.8),
        [20, 30, 34, 41],
    )
    np.testing.assert_allclose(lrs, [0.8**2, 0.8**3, 0.8**5, 0.8**8.5], rtol=1e-5)


def test_each_phase_has_its_peak_lr():
    # The update after `step` completed updates uses the lr of the phase it belongs to.
    two = ScheduleSpec(
        phases=TWO_PHASES,
        peak_lrs=(0.1, 0.5),
        total_steps=50,
        decay="step",
        boundaries=(40,),
        decay_factor=0.1,
    )
    np.testing.assert_allclose(
        values(two, [0, 29, 30, 39, 40]), [0.1, 0.1, 0.5, 0.5, 0.05], rtol=1e-6
    )


def test_unknown_decay():
    with pytest.raises(UsageError, match="valid: constant, step, cosine, polynomial, exponential"):
        make_schedule(spec(total_steps=10, decay="linear"))


@pytest.mark.parametrize(
    "option, value", [("power", 0.0), ("decay_rate", -0.5), ("decay_factor", 0.0)]
)
def test_decay_options_must_be_positive(option, value):
    schedule = base_config().schedule
    schedule[option] = value
    with pytest.raises(UsageError, match=f"schedule.{option}={value!r} must be a positive"):
        check_ranges(schedule, "schedule")

import math

import numpy as np
import pytest

from bnresearch.errors import UsageError
from bnresearch.optim.schedules import ScheduleSpec, make_schedule


def values(spec, steps):
    schedule = make_schedule(spec)
    return np.array([float(schedule(s)) for s in steps])


def test_constant_with_linear_warmup():
    spec = ScheduleSpec(peak_lr=0.4, total_steps=100, warmup_steps=4, decay="constant")
    np.testing.assert_allclose(values(spec, [0, 1, 2, 3, 4, 50, 99]),
                               [0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4], rtol=1e-6)


def test_cosine_after_warmup():
    spec = ScheduleSpec(peak_lr=1.0, total_steps=110, warmup_steps=10, decay="cosine")
    steps = [10, 35, 60, 85, 110]
    expected = [0.5 * (1 + math.cos(math.pi * (s - 10) / 100)) for s in steps]
    np.testing.assert_allclose(values(spec, steps), expected, rtol=1e-5, atol=1e-7)


def test_step_decay_at_boundaries():
    spec = ScheduleSpec(peak_lr=0.1, total_steps=100, decay="step", boundaries=(30, 60),
                        decay_factor=0.2)
    np.testing.assert_allclose(values(spec, [0, 29, 30, 59, 60, 99]),
                               [0.1, 0.1, 0.02, 0.02, 0.004, 0.004], rtol=1e-6)


def test_unknown_decay():
    with pytest.raises(UsageError, match="valid: constant, cosine, step"):
        make_schedule(ScheduleSpec(peak_lr=0.1, total_steps=10, decay="linear"))

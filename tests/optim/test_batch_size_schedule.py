"""Phases of a batch-size schedule and durations resolved through them, against hand counts."""

import pytest

from bnresearch.config.defaults import base_config
from bnresearch.errors import UsageError
from bnresearch.optim.batch_size_schedule import make_timeline, schedule_from_config

# 1000 examples: batch 10 -> 100 steps per epoch, 50 -> 20, 250 -> 4.
SMITH = make_timeline(num_train=1000, batch_size=10, schedule=((2, 50), (3.5, 250)))


def test_phases_start_where_their_epochs_are_reached():
    assert [(p.first_step, p.steps_per_epoch, p.batch_size) for p in SMITH.phases] == [
        (0, 100, 10),
        (200, 20, 50),
        (230, 4, 250),
    ]


@pytest.mark.parametrize(
    "duration, step",
    [
        ("0 steps", 0),
        ("150 steps", 150),
        ("1.5 epochs", 150),
        ("2 epochs", 200),
        ("3 epochs", 220),
        ("3.5 epochs", 230),
        ("5 epochs", 236),
        ("5.1 epochs", 236),
    ],
)
def test_points_in_epochs_resolve_phase_by_phase(duration, step):
    assert SMITH.step_at(duration) == step


def test_epoch_at_inverts_step_at():
    for epoch in (0.5, 2, 3, 3.5, 4.75):
        assert SMITH.epoch_at(SMITH.step_at_epoch(epoch)) == pytest.approx(epoch)


def test_phase_at_is_the_phase_of_the_next_update():
    assert [SMITH.phase_at(step).batch_size for step in (0, 199, 200, 229, 230, 999)] == [
        10,
        10,
        50,
        50,
        250,
        250,
    ]


def test_intervals_in_epochs_restart_at_each_phase():
    every_half_epoch = SMITH.every("0.5 epochs")
    due = [step for step in range(1, 245) if every_half_epoch.is_due(step)]
    assert due == [50, 100, 150, 200, 210, 220, 230, 232, 234, 236, 238, 240, 242, 244]


def test_intervals_in_steps_count_from_the_start():
    every_7 = SMITH.every("7 steps")
    assert [step for step in range(195, 240) if every_7.is_due(step)] == [
        196,
        203,
        210,
        217,
        224,
        231,
        238,
    ]
    assert not any(SMITH.every("0 steps").is_due(step) for step in range(1, 300))
    assert all(SMITH.every("0 steps", minimum=1).is_due(step) for step in range(1, 300))


@pytest.mark.parametrize("every", ["0.5 epochs", "7 steps", "0 steps", "1 epochs"])
def test_next_due_is_the_first_due_step_after(every):
    cadence = SMITH.every(every)
    due = [step for step in range(1, 400) if cadence.is_due(step)]
    for step in range(0, 350):
        later = [d for d in due if d > step]
        assert cadence.next_due(step) == (later[0] if later else None)


def test_accumulation_counts_examples_per_update():
    timeline = make_timeline(num_train=1000, batch_size=10, accumulation_steps=4)
    phase = timeline.phases[0]
    assert (phase.examples_per_update, phase.steps_per_epoch) == (40, 25)
    assert timeline.step_at("2 epochs") == 50


def test_a_fixed_batch_size_resolves_as_before():
    timeline = make_timeline(num_train=1437, batch_size=32)
    assert timeline.step_at("1 epochs") == 1437 // 32
    assert timeline.step_at("30 epochs") == 30 * (1437 // 32)


@pytest.mark.parametrize(
    "schedule, message",
    [
        (((0, 64),), "epochs must increase from above 0"),
        (((2, 64), (2, 128)), "epochs must increase from above 0, got 2 after 2"),
        (((2, 0),), r"batch_sizes entry 0 \(from epoch 2\) must be a positive whole number"),
        (((1, 2000),), "exceeds the 1000 training examples"),
        (((1, 20), (1.001, 40)), "starts before the previous phase takes a step"),
    ],
)
def test_bad_schedules_are_refused(schedule, message):
    with pytest.raises(UsageError, match=message):
        make_timeline(num_train=1000, batch_size=10, schedule=schedule)


def test_the_config_block_pairs_epochs_with_batch_sizes():
    block = base_config().batch_size_schedule
    block.epochs, block.batch_sizes = (60, 120.5), (640, 3200)
    assert schedule_from_config(block) == ((60, 640), (120.5, 3200))
    block.batch_sizes = (640,)
    with pytest.raises(UsageError, match="has 2 epochs but 1 batch_sizes"):
        schedule_from_config(block)

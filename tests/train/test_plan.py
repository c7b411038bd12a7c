"""The plan of a run: durations, warmup and peak lr resolved from a config and the data's size."""

import math

import pytest

from bnresearch.train.plan import make_plan
from configs import batch_scaling
from tests.train.runs import tiny_config

# 1437 digits: (batch size, steps per epoch, LEGW warmup steps, linear warmup steps) for one
# warmup epoch at base batch 64. LEGW's B/64 epochs at 1437 // B steps each keep the warmup
# about as long in steps as at 64 (rounding aside), where a plain 1-epoch warmup shrinks.
LEGW_CASES = [
    (64, 22, 22, 22),
    (128, 11, 22, 11),
    (256, 5, 20, 5),
    (512, 2, 16, 2),
    (32, 44, 22, 44),
]


@pytest.mark.parametrize("batch_size, steps_per_epoch, legw_steps, linear_steps", LEGW_CASES)
def test_a_runs_plan_stretches_the_legw_warmup_and_scales_the_lr_by_sqrt(
    batch_size, steps_per_epoch, legw_steps, linear_steps
):
    # batch_scaling's base: lr 0.1 at batch 64, one warmup epoch, 20 epochs.
    for warmup, scaling, expected_steps in (
        ("legw", "sqrt", legw_steps),
        ("linear", "sqrt", linear_steps),
    ):
        config = batch_scaling.get_config(
            f"batch_size={batch_size},scaling={scaling},warmup={warmup}"
        )
        plan = make_plan(config, num_train=1437)
        assert plan.total_steps == 20 * steps_per_epoch
        assert plan.schedule.warmup_steps == expected_steps
        assert plan.schedule.peak_lrs == (pytest.approx(0.1 * math.sqrt(batch_size / 64)),)


def test_a_batch_size_schedule_gives_each_phase_its_batch_and_the_pipeline_its_changes():
    # 1437 digits at 32 x 2 copies, then 64 x 2 from epoch 2: 44 steps per epoch in phase 1, so
    # phase 2 starts at step 88; 22 steps per epoch after it, 3 epochs in all reach step 110.
    config = batch_scaling.get_config("batch_size=32")
    config.batch_augmentation.multiplicity = 2
    config.batch_size_schedule.epochs = (2,)
    config.batch_size_schedule.batch_sizes = (64,)
    config.train_duration = "3 epochs"
    plan = make_plan(config, num_train=1437)
    assert plan.total_steps == 88 + 22
    assert plan.train_batch_sizes == (64, 128)
    assert plan.batch_size_changes() == ((88, 64),)
    assert plan.images_per_epoch == 1437 * 2


def test_a_phase_the_run_never_reaches_is_not_planned():
    config = batch_scaling.get_config("batch_size=32")
    config.batch_size_schedule.epochs = (5,)
    config.batch_size_schedule.batch_sizes = (64,)
    config.train_duration = "3 epochs"
    assert make_plan(config, num_train=1437).train_batch_sizes == (32,)


def calls_from(plan, step):
    """(first step, updates) of each call the loop makes after `step` completed updates."""
    while step < plan.total_steps:
        updates = plan.updates_in_call(step)
        yield step, updates
        step += updates


@pytest.mark.parametrize("k, start", [(8, 0), (8, 13), (5, 0), (1, 0)])
def test_a_call_makes_k_updates_unless_something_is_due_sooner(k, start):
    # Checked step by step against the cadences themselves: logs every 10 steps, evaluations
    # every 25, checkpoints every half epoch (22 steps at 32 per batch), the noise scale before
    # every 7th update, and the batch doubled at epoch 1.5 (step 66).
    config = tiny_config(
        "unused",
        steps_per_call=k,
        train_duration="3 epochs",
        log_every="10 steps",
        eval_every="25 steps",
        **{
            "checkpoint.every": "0.5 epochs",
            "noise_scale.enabled": True,
            "noise_scale.every": "7 steps",
            "batch_size_schedule.epochs": (1.5,),
            "batch_size_schedule.batch_sizes": (64,),
        },
    )
    plan = make_plan(config, num_train=1437)
    calls = list(calls_from(plan, start))
    assert calls[0][0] == start and sum(updates for _, updates in calls) == plan.total_steps - start

    def stops_after(step):  # a call may not run past this step
        return (
            any(plan.is_due(c, step) for c in (plan.log, plan.eval, plan.checkpoint))
            or plan.timeline.phase_at(step) != plan.timeline.phase_at(step - 1)
            or plan.noise_scale.is_due(step + 1)
        )

    for first, updates in calls:
        assert updates in (1, k)
        inside = range(first + 1, first + updates)
        assert not any(stops_after(step) for step in inside), (first, updates)
        if updates == 1 and k > 1:  # only where K updates would have passed a stop
            assert any(stops_after(step) for step in range(first + 1, first + k))
    assert plan.call_kinds_from(start) == {
        (plan.images_per_call(plan.timeline.phase_at(first)), updates) for first, updates in calls
    }

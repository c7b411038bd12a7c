"""End-to-end behaviour of the training loop on digits: files, determinism, resume, divergence,
batch-size schedules, the noise scale, gradient accumulation and batch augmentation."""

import collections
import json
import logging
import pathlib
import shutil
import signal
import time

import numpy as np
import pytest

from bnresearch.errors import UsageError
from bnresearch.train import preflight
from bnresearch.train.loop import train_and_evaluate
from tests.train.runs import (
    StopAt,
    launch,
    read_metrics,
    read_status,
    tiny_config,
    train_and_record_compilations,
)


def train_losses(metrics):
    return [(m["step"], m["train/loss"]) for m in metrics if "train/loss" in m]


@pytest.fixture(scope="module")
def finished_run_and_compilations(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("run") / "work"
    return workdir, train_and_record_compilations(tiny_config(data_dir), workdir)


@pytest.fixture(scope="module")
def finished_run(finished_run_and_compilations):
    return finished_run_and_compilations[0]


def test_a_run_leaves_its_files(finished_run):
    assert read_status(finished_run)["status"] == "done"
    assert read_status(finished_run)["step"] == 24
    metrics = read_metrics(finished_run)
    assert [step for step, _ in train_losses(metrics)] == list(range(1, 25))
    assert {"train/loss", "train/accuracy", "train/lr"} <= set(metrics[0])
    evals = [m for m in metrics if "eval/accuracy" in m]
    assert [m["step"] for m in evals] == [12, 24]
    assert all(0.0 <= m["eval/accuracy"] <= 1.0 for m in evals)
    config = json.loads((finished_run / "config.json").read_text())
    assert config["dataset"]["name"] == "digits" and config["batch_size"] == 32
    environment = json.loads((finished_run / "environment.json").read_text())
    assert environment[0]["start_step"] == 0 and environment[0]["packages"]["jax"]
    # The start-up: from the call to the first step done, of which compiling.
    assert environment[0]["first_step_after_s"] > environment[0]["compiling_s"] > 0
    assert list(finished_run.glob("events.out.tfevents.*"))
    # Checkpoints every 6 steps, the last 3 kept.
    assert sorted(
        int(p.name) for p in (finished_run / "checkpoints").iterdir() if p.name.isdigit()
    ) == [12, 18, 24]


def test_training_learns(finished_run):
    losses = [loss for _, loss in train_losses(read_metrics(finished_run))]
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:4])


def test_logged_lr_is_the_scheduled_one(finished_run):
    # Quickstart: linear scaling (32/32), 1 epoch of warmup = 44 steps, so during these 24 steps
    # the lr rises linearly as base_lr * (step + 1) / 44 with step counted from 0.
    config = json.loads((finished_run / "config.json").read_text())
    warmup = 1437 // 32
    for step, lr in [
        (m["step"], m["train/lr"]) for m in read_metrics(finished_run) if "train/lr" in m
    ]:
        assert lr == pytest.approx(config["base_lr"] * step / warmup, rel=1e-6)


def test_same_config_and_seed_give_identical_metrics(finished_run, tmp_path, data_dir):
    train_and_evaluate(tiny_config(data_dir), str(tmp_path / "again"))
    assert read_metrics(tmp_path / "again") == read_metrics(finished_run)


def test_another_seed_gives_other_numbers(finished_run, tmp_path, data_dir):
    train_and_evaluate(tiny_config(data_dir, seed=1), str(tmp_path / "seed1"))
    assert train_losses(read_metrics(tmp_path / "seed1")) != train_losses(
        read_metrics(finished_run)
    )


def test_relaunching_a_finished_run_does_nothing(finished_run, data_dir):
    before = (finished_run / "metrics.jsonl").read_bytes()
    assert train_and_evaluate(tiny_config(data_dir), str(finished_run)) == "done"
    assert (finished_run / "metrics.jsonl").read_bytes() == before


def snapshot(directory):
    return {p: p.read_bytes() for p in sorted(pathlib.Path(directory).rglob("*")) if p.is_file()}


def test_another_experiment_is_refused_and_nothing_is_touched(finished_run, data_dir):
    before = snapshot(finished_run)
    with pytest.raises(UsageError, match=r"holds another experiment \(seed: 0 -> 5\)"):
        train_and_evaluate(tiny_config(data_dir, seed=5), str(finished_run))
    assert snapshot(finished_run) == before


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"batch_size": 12}, r"batch_size=12 does not split over 8 devices"),
        (
            {"batch_size": 6, "batch_augmentation.multiplicity": 2},
            r"batch_size x batch_augmentation.multiplicity \(6 x 2\)=12 does not split over 8",
        ),
        (
            {"batch_size_schedule.epochs": (1,), "batch_size_schedule.batch_sizes": (36,)},
            r"batch_size_schedule.batch_sizes\[0\]=36 does not split over 8 devices",
        ),
        (
            {"noise_scale.enabled": True, "noise_scale.sub_batches": 5},
            r"noise_scale.sub_batches=5 does not divide the batch of 32",
        ),
        # 32 / 4: sub-batches of 8, where ghost batch norm's virtual batches of 16 do not fit
        (
            {
                "noise_scale.enabled": True,
                "noise_scale.sub_batches": 4,
                "model.norm": "ghost_batch",
                "model.norm_kwargs.virtual_batch_size": 16,
            },
            r"noise_scale.sub_batches=4 measures gradients on sub-batches of 8 images: ghost batch "
            r"norm: batch_size=8 does not split into virtual batches of virtual_batch_size=16",
        ),
    ],
)
def test_batch_not_divisible_by_devices_is_refused(tmp_path, data_dir, overrides, message):
    with pytest.raises(UsageError, match=message):
        train_and_evaluate(tiny_config(data_dir, **overrides), str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_divergence_is_a_result(tmp_path, data_dir):
    config = tiny_config(
        data_dir, base_lr=1e6, **{"model.norm": "none", "schedule.warmup": "0 steps"}
    )
    assert train_and_evaluate(config, str(tmp_path)) == "diverged"
    status = read_status(tmp_path)
    losses = train_losses(read_metrics(tmp_path))
    first_bad = next(step for step, loss in losses if not np.isfinite(loss))
    assert status == {
        "status": "diverged",
        "step": first_bad,
        "total_steps": 24,
        "wall_time_s": status["wall_time_s"],
    }
    # No checkpoint holds a state past the divergence.
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert all(step < first_bad for step in saved)


def wait_for_step(workdir, process, step, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.stdout.read()
        metrics_file = pathlib.Path(workdir) / "metrics.jsonl"
        if metrics_file.exists():
            lines = metrics_file.read_text().splitlines()
            if lines and json.loads(lines[-1])["step"] >= step:
                return
        time.sleep(0.01)
    raise TimeoutError(f"step {step} not reached")


# Logging every 7 steps: a stop usually falls inside a logging window, whose partial records
# must travel with the checkpoint for the resumed metrics to be bitwise those of one run.
LONG = {
    "train_duration": "200 steps",
    "checkpoint.every": "20 steps",
    "eval_every": "50 steps",
    "log_every": "7 steps",
}


@pytest.fixture(scope="module")
def uninterrupted_long_run(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("long") / "work"
    result = launch(workdir, data_dir, devices=1, **LONG)
    assert result.returncode == 0, result.stderr
    return read_metrics(workdir)


def test_resume_after_sigkill_is_bitwise_exact(tmp_path, data_dir, uninterrupted_long_run):
    process = launch(tmp_path, data_dir, devices=1, wait=False, **LONG)
    wait_for_step(tmp_path, process, 70)
    process.kill()
    process.wait()
    assert read_status(tmp_path)["status"] == "running"  # killed, not finished
    result = launch(tmp_path, data_dir, devices=1, **LONG)
    assert result.returncode == 0, result.stderr
    assert "resumed from the checkpoint at step" in result.stderr
    assert read_metrics(tmp_path) == uninterrupted_long_run
    assert read_status(tmp_path)["status"] == "done"


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, data_dir, uninterrupted_long_run):
    process = launch(tmp_path, data_dir, devices=1, wait=False, **LONG)
    wait_for_step(tmp_path, process, 30)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    status = read_status(tmp_path)
    assert status["status"] == "preempted" and 30 <= status["step"] < 200
    assert (tmp_path / "checkpoints" / str(status["step"])).is_dir()
    result = launch(tmp_path, data_dir, devices=1, **LONG)
    assert f"resumed from the checkpoint at step {status['step']}" in result.stderr
    assert read_metrics(tmp_path) == uninterrupted_long_run


def test_one_device_and_eight_devices_agree(tmp_path, data_dir):
    overrides = {"train_duration": "5 steps", "eval_every": "0 steps"}
    one = launch(tmp_path / "one", data_dir, devices=1, **overrides)
    eight = launch(tmp_path / "eight", data_dir, devices=8, **overrides)
    assert one.returncode == 0 and eight.returncode == 0, one.stderr + eight.stderr
    environment = json.loads((tmp_path / "eight" / "environment.json").read_text())
    assert environment[0]["device_count"] == 8
    losses_one = [loss for _, loss in train_losses(read_metrics(tmp_path / "one"))]
    losses_eight = [loss for _, loss in train_losses(read_metrics(tmp_path / "eight"))]
    assert len(losses_one) == 5
    np.testing.assert_allclose(losses_eight, losses_one, rtol=2e-5)


# Large-batch runs: a batch-size schedule (Smith et al.) with the noise scale measured, and
# gradient accumulation with batch augmentation.
# 32 per batch: 44 steps per epoch, so epoch 0.18 is step round(7.92) = 8; then 64 per batch.
SCHEDULE = {
    "batch_size_schedule.epochs": (0.18,),
    "batch_size_schedule.batch_sizes": (64,),
    "batch_size_schedule.lr": "rescaled",
    "train_duration": "16 steps",
    "eval_every": "0 steps",
    "checkpoint.every": "4 steps",
    "checkpoint.keep": 10,
    "noise_scale.enabled": True,
    "noise_scale.every": "2 steps",
    "noise_scale.sub_batches": 4,
}


@pytest.fixture(scope="module")
def schedule_run(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("schedule") / "work"
    return workdir, train_and_record_compilations(tiny_config(data_dir, **SCHEDULE), workdir)


def test_batch_size_schedule_switches_at_its_epoch_and_compiles_each_size_once(schedule_run):
    workdir, compiled = schedule_run
    train = [m for m in read_metrics(workdir) if "train/loss" in m]
    assert [m["step"] for m in train] == list(range(1, 17))
    assert [m["train/batch_size"] for m in train] == [32] * 8 + [64] * 8
    # One compilation per batch size, for the train step and the noise-scale measurement.
    assert compiled.count("jit(train_step)") == 2
    assert compiled.count("jit(noise_scale_step)") == 2


def test_logged_lr_follows_each_phase(schedule_run):
    # rescaled + linear: peak 0.05 at 32 per batch, 0.1 at 64. Warmup of 1 epoch: 8 steps reach
    # epoch 0.18, and the remaining 0.82 epoch at 22 steps per epoch is round(18.04) = 18 more:
    # 26 steps. The update logged at step n applies lr = peak * n / 26 (cosine has not begun).
    train = [m for m in read_metrics(schedule_run[0]) if "train/lr" in m]
    for record in train:
        peak = 0.05 if record["step"] <= 8 else 0.1
        assert record["train/lr"] == pytest.approx(peak * record["step"] / 26, rel=1e-6)


def test_noise_scale_is_logged_finite_and_positive(schedule_run):
    noise = [m for m in read_metrics(schedule_run[0]) if "train/noise_scale" in m]
    assert [m["step"] for m in noise] == list(range(2, 17, 2))
    for record in noise:
        for key in (
            "train/noise_scale",
            "train/noise_scale_gradient_sq",
            "train/noise_scale_trace",
        ):
            assert np.isfinite(record[key]) and record[key] > 0, record


def test_without_the_noise_scale_nothing_of_it_is_compiled_or_logged(finished_run_and_compilations):
    workdir, compiled = finished_run_and_compilations
    assert "jit(train_step)" in compiled and "jit(noise_scale_step)" not in compiled
    assert not any(key.startswith("train/noise_scale") for m in read_metrics(workdir) for key in m)


def test_noise_scale_grows_as_the_loss_falls_on_digits(tmp_path, data_dir):
    # McCandlish et al.: B_simple grows as training progresses. The small CNN over three epochs
    # at batch 64 (the train loss falls from about 2.3 to below 0.3), measured every 6 steps.
    config = tiny_config(
        data_dir,
        batch_size=64,
        base_batch_size=64,
        base_lr=0.1,
        train_duration="66 steps",
        log_every="11 steps",
        eval_every="0 steps",
        **{
            "checkpoint.every": "0 steps",
            "model.options.widths": (16, 32),
            "noise_scale.enabled": True,
            "noise_scale.every": "6 steps",
        },
    )
    assert train_and_evaluate(config, str(tmp_path)) == "done"
    metrics = read_metrics(tmp_path)
    noise = np.array([m["train/noise_scale"] for m in metrics if "train/noise_scale" in m])
    losses = [loss for _, loss in train_losses(metrics)]
    assert noise.size == 11 and np.all(np.isfinite(noise)) and np.all(noise > 0)
    assert losses[-1] < losses[0] / 4
    assert noise[-1] > 2 * noise[0]
    # Rank correlation of B_simple with the step: it rises nearly monotonically.
    ranks = np.argsort(np.argsort(noise))
    assert np.corrcoef(ranks, np.arange(noise.size))[0, 1] > 0.8, noise


def test_resume_in_the_second_phase_is_bitwise_exact(schedule_run, tmp_path, data_dir, caplog):
    # A restart from the checkpoint at step 12 (batch size 64, with its data position and noise
    # EMAs), as after a crash, reproduces steps 13-16 exactly.
    finished, _ = schedule_run
    workdir = tmp_path / "restarted"
    shutil.copytree(finished, workdir)
    shutil.rmtree(workdir / "checkpoints" / "16")
    (workdir / "status.json").write_text(json.dumps({"status": "running", "step": 12}))
    with caplog.at_level(logging.INFO, logger="bnresearch"):
        assert train_and_evaluate(tiny_config(data_dir, **SCHEDULE), str(workdir)) == "done"
    assert "resumed from the checkpoint at step 12" in caplog.text
    assert "compiled the train step for batch size(s) 64 in" in caplog.text  # phase 2 only
    assert read_metrics(workdir) == read_metrics(finished)


def test_accumulation_and_batch_augmentation_count_updates_of_distinct_examples(
    tmp_path, data_dir, monkeypatch
):
    # 2 micro-batches of 16 examples, each example twice: 64 images per call, 32 distinct
    # examples per update, which sets the lr (0.05 at base 32) and the epoch (44 updates).
    config = tiny_config(
        data_dir,
        batch_size=16,
        train_duration="4 steps",
        eval_every="0 steps",
        **{
            "optimizer.accumulation_steps": 2,
            "batch_augmentation.multiplicity": 2,
            "checkpoint.every": "0 steps",
        },
    )
    builds = []
    build = preflight.models.model_from_config
    monkeypatch.setattr(
        preflight.models,
        "model_from_config",
        lambda *args, **facts: builds.append(facts) or build(*args, **facts),
    )
    assert train_and_evaluate(config, str(tmp_path)) == "done"
    # Layers that count epochs or updates in forward passes are told what those are by the
    # builds that know the data (the config check builds without them): an epoch shows them
    # 1437 x 2 images, an update is 2 passes.
    assert {
        (facts["images_per_epoch"], facts["accumulation_steps"])
        for facts in builds
        if "image_shape" in facts
    } == {(1437 * 2, 2)}
    train = [m for m in read_metrics(tmp_path) if "train/loss" in m]
    assert [m["step"] for m in train] == [1, 2, 3, 4]
    assert {m["train/batch_size"] for m in train} == {32}
    for record in train:
        assert record["train/lr"] == pytest.approx(0.05 * record["step"] / 44, rel=1e-6)
        assert record["train/epoch"] == pytest.approx(record["step"] / 44)


def test_a_stop_inside_a_logging_window_resumes_to_the_same_records(
    tmp_path, data_dir, monkeypatch
):
    # Logging every 5 steps, checkpoints every 10: step 13 is neither, so the open window
    # (steps 11-13) must be saved with the checkpoint and finished after the resume.
    overrides = {
        "log_every": "5 steps",
        "checkpoint.every": "10 steps",
        "eval_every": "0 steps",
        "train_duration": "20 steps",
    }
    train_and_evaluate(tiny_config(data_dir, **overrides), str(tmp_path / "whole"))
    monkeypatch.setattr("bnresearch.train.loop.PreemptionWatch", lambda: StopAt(13))
    assert (
        train_and_evaluate(tiny_config(data_dir, **overrides), str(tmp_path / "stopped"))
        == "preempted"
    )
    assert read_status(tmp_path / "stopped")["step"] == 13
    assert [m["step"] for m in read_metrics(tmp_path / "stopped")] == [5, 10]
    monkeypatch.setattr("bnresearch.train.loop.PreemptionWatch", lambda: StopAt(-1))
    assert (
        train_and_evaluate(tiny_config(data_dir, **overrides), str(tmp_path / "stopped")) == "done"
    )
    assert read_metrics(tmp_path / "stopped") == read_metrics(tmp_path / "whole")


OUR_PROGRAMS = ("jit(create_train_state)", "jit(train_step)", "jit(eval_step)")


def test_nothing_compiles_again_at_steady_state_or_after_a_resume(
    finished_run_and_compilations, tmp_path, data_dir, monkeypatch
):
    _, compiled = finished_run_and_compilations
    # The init, the train step and the eval step compile once each in a run that evaluates
    # twice and checkpoints four times.
    assert {name: compiled.count(name) for name in OUR_PROGRAMS} == dict.fromkeys(OUR_PROGRAMS, 1)
    # A run twice as long (four evaluations, eight checkpoints) compiles exactly the same
    # programs, each as often: nothing compiles again once the loop runs, inside the library or
    # in the libraries it calls (orbax's first save compiles its slicing programs, once).
    longer = train_and_record_compilations(
        tiny_config(data_dir, train_duration="48 steps"), tmp_path / "longer"
    )
    assert collections.Counter(longer) == collections.Counter(compiled)
    # Stopped at step 12 and resumed: the resumed run restores instead of initializing and
    # compiles its two steps once each.
    monkeypatch.setattr("bnresearch.train.loop.PreemptionWatch", lambda: StopAt(12))
    train_and_record_compilations(tiny_config(data_dir), tmp_path / "resumed", "preempted")
    monkeypatch.setattr("bnresearch.train.loop.PreemptionWatch", lambda: StopAt(-1))
    resumed = train_and_record_compilations(tiny_config(data_dir), tmp_path / "resumed")
    assert {name: resumed.count(name) for name in OUR_PROGRAMS} == {
        "jit(create_train_state)": 0,
        "jit(train_step)": 1,
        "jit(eval_step)": 1,
    }

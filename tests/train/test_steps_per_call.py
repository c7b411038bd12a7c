"""Several updates per compiled call (`steps_per_call`, K), against the independent reference of
K = 1: metrics.jsonl (byte for byte) and the final train state are the same for Ks that do not
divide the logging interval, across a preemption inside a call and a restart after a crash, and
with gradient accumulation, a batch-size schedule and the noise scale; each kind of call compiles
once, and a longer run compiles nothing more."""

import json
import shutil

import jax
import numpy as np
import pytest

from bnresearch.train.loop import train_and_evaluate
from tests.train.runs import (
    StopAt,
    final_state,
    read_status,
    tiny_config,
    train_and_record_compilations,
)

# A two-stage CNN logged and checkpointed every 10 steps, evaluated every 20: with K = 8 each
# stretch of 10 is a call of 8 updates and two of 1, with K = 3 three calls of 3 and one of 1.
SMALL_CNN = {"model.options.widths": (8, 16)}
RUN = {
    **SMALL_CNN,
    "train_duration": "30 steps",
    "log_every": "10 steps",
    "eval_every": "20 steps",
    "checkpoint.every": "10 steps",
}


def metrics_bytes(workdir):
    return (workdir / "metrics.jsonl").read_bytes()


def assert_same_state(state, reference):
    assert jax.tree.structure(state) == jax.tree.structure(reference)
    for (path, leaf), expected in zip(
        jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(reference)
    ):
        assert np.array_equal(leaf, expected), jax.tree_util.keystr(path)


@pytest.fixture(scope="module")
def one_per_call(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("one_per_call") / "work"
    assert train_and_evaluate(tiny_config(data_dir, **RUN), str(workdir)) == "done"
    return workdir


@pytest.mark.parametrize("k", [8, 3])
def test_k_updates_per_call_give_the_numbers_of_one(one_per_call, tmp_path, data_dir, k):
    compiled = train_and_record_compilations(
        tiny_config(data_dir, steps_per_call=k, **RUN), tmp_path
    )
    assert metrics_bytes(tmp_path) == metrics_bytes(one_per_call)
    assert_same_state(final_state(tmp_path), final_state(one_per_call))
    # Three calls of K updates, six or three single steps, two evaluations: the call of K
    # updates and the single step compile once each, as do the init and the eval step.
    ours = ("jit(create_train_state)", "jit(train_steps)", "jit(train_step)", "jit(eval_step)")
    assert {name: compiled.count(name) for name in ours} == dict.fromkeys(ours, 1)


def test_a_stop_inside_a_call_saves_at_its_end_and_resumes_to_the_same_numbers(
    one_per_call, tmp_path, data_dir, monkeypatch
):
    # The notice comes at step 13, inside the call of steps 11-18: the run saves at 18, with the
    # logging window it leaves open (steps 11-18), and stops.
    config = tiny_config(data_dir, steps_per_call=8, **RUN)
    monkeypatch.setattr("bnresearch.train.loop.PreemptionWatch", lambda: StopAt(13))
    assert train_and_evaluate(config, str(tmp_path)) == "preempted"
    assert read_status(tmp_path)["step"] == 18
    monkeypatch.setattr("bnresearch.train.loop.PreemptionWatch", lambda: StopAt(-1))
    assert train_and_evaluate(config, str(tmp_path)) == "done"
    assert metrics_bytes(tmp_path) == metrics_bytes(one_per_call)
    assert_same_state(final_state(tmp_path), final_state(one_per_call))


def test_a_restart_after_a_crash_resumes_to_the_same_numbers(one_per_call, tmp_path, data_dir):
    # What a kill after step 25 leaves: checkpoints up to 20, the records up to 25, status
    # running. The restart resumes at 20, in the middle of the run, with calls of K again.
    config = tiny_config(data_dir, steps_per_call=8, **RUN)
    finished = tmp_path / "finished"
    assert train_and_evaluate(config, str(finished)) == "done"
    crashed = tmp_path / "crashed"
    shutil.copytree(finished, crashed)
    shutil.rmtree(crashed / "checkpoints" / "30")
    (crashed / "status.json").write_text(json.dumps({"status": "running", "step": 25}))
    assert train_and_evaluate(config, str(crashed)) == "done"
    assert metrics_bytes(crashed) == metrics_bytes(one_per_call)
    assert_same_state(final_state(crashed), final_state(one_per_call))


def test_accumulation_a_batch_size_schedule_and_the_noise_scale_give_the_numbers_of_one(
    tmp_path, data_dir
):
    # 2 micro-batches of 16 per update until step 8 (epoch 0.18), then of 32; the noise scale
    # measured before updates 8 and 16, logs and checkpoints every 8 steps. With K = 4 the calls
    # of each phase are 4 updates (8 micro-batches), then 1, 1, 1 up to the measurement, then 1.
    large_batch = {
        **SMALL_CNN,
        "batch_size": 16,
        "optimizer.accumulation_steps": 2,
        "batch_size_schedule.epochs": (0.18,),
        "batch_size_schedule.batch_sizes": (32,),
        "train_duration": "16 steps",
        "log_every": "8 steps",
        "eval_every": "0 steps",
        "checkpoint.every": "8 steps",
        "noise_scale.enabled": True,
        "noise_scale.every": "8 steps",
        "noise_scale.sub_batches": 4,
    }
    for k in (1, 4):
        config = tiny_config(data_dir, steps_per_call=k, **large_batch)
        assert train_and_evaluate(config, str(tmp_path / str(k))) == "done"
    assert metrics_bytes(tmp_path / "4") == metrics_bytes(tmp_path / "1")
    assert_same_state(final_state(tmp_path / "4"), final_state(tmp_path / "1"))
    records = [json.loads(line) for line in metrics_bytes(tmp_path / "4").splitlines()]
    assert [r["step"] for r in records if "train/noise_scale" in r] == [8, 16]

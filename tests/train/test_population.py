"""A population of runs trained as one vectorised program (bnresearch/train/population.py),
against the independent reference of each member run alone: the same records in metrics.jsonl
(train losses within float rounding, the same eval accuracies) and the same final state within a
stated tolerance; divergence isolated to its member; a preemption and a crash resumed to the
uninterrupted population's numbers, bitwise; members spread over a mesh axis of their own with no
collective between them."""

import json
import shutil

import jax
import numpy as np
import pytest

from bnresearch.errors import UsageError
from bnresearch.parallel.mesh import make_mesh
from bnresearch.train.loop import train_and_evaluate
from bnresearch.train.population import (
    compile_population_steps,
    preflight_population,
    stacked_layout,
    train_population,
)
from tests.train.runs import StopAt, final_state, read_metrics, read_status, tiny_config

SMALL_CNN = {"model.options.widths": (8, 16)}
RUN = {
    **SMALL_CNN,
    "train_duration": "20 steps",
    "log_every": "5 steps",
    "eval_every": "10 steps",
    "checkpoint.every": "5 steps",
}

# vmap sums batch norm's means and the softmax's terms in another order than a single run's
# program (a few ulp at the first step, measured); 20 steps of training grow that to this much.
LOSS_RTOL = 1e-4
STATE_ATOL = 1e-4


def population_configs(data_dir, seeds, **overrides):
    return [tiny_config(data_dir, seed=seed, **RUN, **overrides) for seed in seeds]


def assert_close_records(records, reference):
    assert [r["step"] for r in records] == [r["step"] for r in reference]
    for record, expected in zip(records, reference):
        assert record.keys() == expected.keys()
        for key, value in record.items():
            if key == "eval/accuracy" or key in ("train/batch_size", "train/epoch", "train/lr"):
                assert value == expected[key], (record["step"], key)
            else:
                np.testing.assert_allclose(value, expected[key], rtol=LOSS_RTOL, err_msg=key)


def assert_close_states(state, reference):
    assert jax.tree.structure(state) == jax.tree.structure(reference)
    for (path, leaf), expected in zip(
        jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(reference)
    ):
        np.testing.assert_allclose(
            leaf, expected, atol=STATE_ATOL, err_msg=jax.tree_util.keystr(path)
        )


def assert_same_files(workdir, reference):
    assert (workdir / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    for leaf, expected in zip(
        jax.tree.leaves(final_state(workdir)), jax.tree.leaves(final_state(reference))
    ):
        np.testing.assert_array_equal(leaf, expected)


@pytest.fixture(scope="module")
def solo_runs(tmp_path_factory, data_dir):
    """Seeds 0 and 1, each run alone: the reference."""
    root = tmp_path_factory.mktemp("solo")
    for config in population_configs(data_dir, (0, 1)):
        assert train_and_evaluate(config, str(root / f"seed{config.seed}")) == "done"
    return root


@pytest.fixture(scope="module")
def population_run(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("population")
    workdirs = [root / "seed0", root / "seed1"]
    assert train_population(population_configs(data_dir, (0, 1)), workdirs) == ["done", "done"]
    return root


@pytest.mark.parametrize("seed", [0, 1])
def test_each_member_is_its_single_run(solo_runs, population_run, seed):
    member, alone = population_run / f"seed{seed}", solo_runs / f"seed{seed}"
    assert_close_records(read_metrics(member), read_metrics(alone))
    assert_close_states(final_state(member), final_state(alone))
    assert json.loads((member / "config.json").read_text()) == json.loads(
        (alone / "config.json").read_text()
    )
    assert read_status(member)["status"] == "done" and read_status(member)["step"] == 20


def test_a_member_resumes_alone_and_a_single_run_joins_a_population(
    solo_runs, population_run, tmp_path, data_dir
):
    # Nothing downstream knows the difference: launch.py on a member's workdir sees a finished
    # run; a single run killed after step 17 finishes inside a population.
    configs = population_configs(data_dir, (0, 1))
    assert train_and_evaluate(configs[0], str(population_run / "seed0")) == "done"
    half = tmp_path / "seed0"
    shutil.copytree(solo_runs / "seed0", half)
    shutil.rmtree(half / "checkpoints" / "20")
    (half / "status.json").write_text(json.dumps({"status": "running", "step": 17}))
    kept = sorted(p.name for p in (half / "checkpoints").iterdir() if p.name.isdigit())
    assert kept
    assert train_population(configs, [half, tmp_path / "seed1"]) == ["done", "done"]
    assert_close_records(read_metrics(half), read_metrics(solo_runs / "seed0"))
    # The members shared no checkpoint, so both started afresh; seed 0's checkpoints were set
    # aside, not deleted.
    aside = sorted(p.name.split("-")[1] for p in (half / "checkpoints").glob("superseded-*"))
    assert aside == kept


def test_a_diverging_member_stops_alone(solo_runs, tmp_path, data_dir):
    # Member 0 at lr 1e6 blows up in its first steps; member 1, seed 1 at the usual lr, trains
    # on as if alone. The members' lr schedules differ, so each reads its own.
    configs = [
        tiny_config(data_dir, seed=0, base_lr=1e6, **RUN),
        tiny_config(data_dir, seed=1, **RUN),
    ]
    workdirs = [tmp_path / "wild", tmp_path / "tame"]
    assert train_population(configs, workdirs) == ["diverged", "done"]
    wild = read_status(workdirs[0])
    assert wild["status"] == "diverged" and wild["step"] < 20
    train_records = [r for r in read_metrics(workdirs[0]) if "train/loss" in r]
    assert not np.isfinite(train_records[-1]["train/loss"])
    assert train_records[-1]["step"] < 20
    assert_close_records(read_metrics(workdirs[1]), read_metrics(solo_runs / "seed1"))
    assert_close_states(final_state(workdirs[1]), final_state(solo_runs / "seed1"))


@pytest.mark.parametrize(
    "overrides",
    [
        [
            {"seed": 0, "base_lr": 0.02, "schedule.warmup": "3 steps"},
            {"seed": 0, "base_lr": 0.1, "label_smoothing": 0.1},
        ],
        [
            {"seed": 0, "optimizer.weight_decay": 1e-2, "optimizer.momentum": 0.5},
            {"seed": 0, "optimizer.weight_decay": 5e-4, "optimizer.momentum": 0.9},
        ],
        # Layer options (layers/options.py); a member with head dropout 0 next to one with 0.3
        # draws no mask that changes it.
        [
            {
                "seed": 0,
                "model.norm_kwargs.epsilon": 1e-1,
                "model.norm_kwargs.momentum": 0.5,
                "model.dropout.head": 0.0,
            },
            {
                "seed": 0,
                "model.norm_kwargs.epsilon": 1e-5,
                "model.norm_kwargs.momentum": 0.9,
                "model.dropout.head": 0.3,
            },
        ],
    ],
    ids=["lr_and_label_smoothing", "weight_decay_and_momentum", "norm_options_and_dropout"],
)
def test_members_with_their_own_hyperparameters_match_their_single_runs(
    overrides, tmp_path, data_dir
):
    configs = [tiny_config(data_dir, **RUN, **member) for member in overrides]
    workdirs = [tmp_path / "a", tmp_path / "b"]
    assert train_population(configs, workdirs) == ["done", "done"]
    for config, workdir in zip(configs, workdirs):
        alone = tmp_path / f"alone_{workdir.name}"
        assert train_and_evaluate(config, str(alone)) == "done"
        assert_close_records(read_metrics(workdir), read_metrics(alone))
        assert_close_states(final_state(workdir), final_state(alone))
    # Same seed, so the members differ by those hyperparameters alone, and they do.
    last = lambda workdir: [m for m in read_metrics(workdir) if "train/loss" in m][-1]
    assert last(workdirs[0])["train/loss"] != last(workdirs[1])["train/loss"]


def test_a_preempted_population_resumes_to_the_same_numbers(
    population_run, tmp_path, data_dir, monkeypatch
):
    # The notice comes at step 7, between checkpoints: every member saves at 7 with its open
    # logging window (steps 6 and 7) and the population stops; the relaunch ends bitwise where
    # the uninterrupted population did.
    configs = population_configs(data_dir, (0, 1))
    workdirs = [tmp_path / "seed0", tmp_path / "seed1"]
    monkeypatch.setattr("bnresearch.train.population.PreemptionWatch", lambda: StopAt(7))
    assert train_population(configs, workdirs) == ["preempted", "preempted"]
    assert [read_status(w)["step"] for w in workdirs] == [7, 7]
    monkeypatch.setattr("bnresearch.train.population.PreemptionWatch", lambda: StopAt(-1))
    assert train_population(configs, workdirs) == ["done", "done"]
    for workdir in workdirs:
        assert_same_files(workdir, population_run / workdir.name)


def test_a_crash_between_members_saves_resumes_at_their_shared_step(
    population_run, tmp_path, data_dir
):
    # A kill after step 17 while member 1's checkpoint at 15 was being written: member 0 has 15,
    # member 1 only 10. Both resume at 10 and end bitwise as the uninterrupted population.
    configs = population_configs(data_dir, (0, 1))
    workdirs = [tmp_path / "seed0", tmp_path / "seed1"]
    for workdir, kept in zip(workdirs, (15, 10)):
        shutil.copytree(population_run / workdir.name, workdir)
        for step in (15, 20):
            if step > kept:
                shutil.rmtree(workdir / "checkpoints" / str(step))
        (workdir / "status.json").write_text(json.dumps({"status": "running", "step": 17}))
    assert train_population(configs, workdirs) == ["done", "done"]
    for workdir in workdirs:
        assert_same_files(workdir, population_run / workdir.name)


def test_members_that_would_compile_different_programs_are_refused(tmp_path, data_dir):
    configs = [
        tiny_config(data_dir, seed=0, **RUN),
        tiny_config(data_dir, seed=1, **{**RUN, "model.activation": "gelu"}),
    ]
    with pytest.raises(UsageError, match=r"differ in model\.activation; they may differ"):
        train_population(configs, [tmp_path / "a", tmp_path / "b"])
    # Weight decay may differ, but 0 leaves its transform (and state) out of the optimizer.
    configs[1] = tiny_config(data_dir, seed=1, **{**RUN, "optimizer.weight_decay": 0.0})
    with pytest.raises(UsageError, match=r"must all have optimizer\.weight_decay > 0 or all 0"):
        train_population(configs, [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(UsageError, match="steps_per_call > 1"):
        train_population(
            population_configs(data_dir, (0, 1), steps_per_call=2), [tmp_path / "c", tmp_path / "d"]
        )
    for blocked, message in (
        ({"landscape.enabled": True}, "landscape.enabled"),
        ({"model.init_method": "gradinit"}, "model.init_method=gradinit"),
    ):
        with pytest.raises(UsageError, match=message):
            train_population(
                population_configs(data_dir, (0, 1), **blocked), [tmp_path / "e", tmp_path / "f"]
            )
    assert not any(tmp_path.iterdir())  # refused before any workdir was made


def test_a_single_run_refuses_a_members_axis(tmp_path, data_dir):
    config = tiny_config(data_dir, **RUN, **{"mesh.shape.members": 2})
    with pytest.raises(UsageError, match="mesh.shape.members=2 spreads the members"):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")


def test_members_spread_over_their_mesh_axis_train_without_collectives(tmp_path, data_dir):
    # 8 seeds on 8 (simulated) devices, one member per device, each with its whole batch: the
    # compiled step holds no cross-device op, and every member ends as on a single device.
    spread = {"mesh.shape.members": 8, "mesh.shape.data": 1}
    configs = population_configs(data_dir, range(8), **spread)
    population = preflight_population(configs, [tmp_path / f"s{seed}" for seed in range(8)])
    assert population.mesh.shape == {"members": 8, "data": 1, "fsdp": 1}
    layout = stacked_layout(population)
    train = compile_population_steps(population, 0, layout).train
    program = train[32].as_text()
    assert not [op for op in COLLECTIVES if op in program]
    kernel = population.template.layout.abstract.params["stage1_conv1"]["kernel"]
    sharded = jax.tree.leaves(layout[1].params)[0]
    assert sharded.shard_shape((8, *kernel.shape)) == (1, *kernel.shape)

    workdirs = [tmp_path / f"seed{seed}" for seed in range(2)]
    two = population_configs(data_dir, (0, 1), **{"mesh.shape.members": 2, "mesh.shape.data": 4})
    assert train_population(two, workdirs) == ["done", "done"]
    for workdir in workdirs:
        alone = tmp_path / f"alone_{workdir.name}"
        config = tiny_config(data_dir, seed=int(workdir.name[-1]), **RUN)
        assert train_and_evaluate(config, str(alone)) == "done"
        assert_close_records(read_metrics(workdir), read_metrics(alone))


def test_the_mesh_must_hold_whole_members(tmp_path, data_dir):
    configs = population_configs(data_dir, (0, 1, 2), **{"mesh.shape.members": 2})
    with pytest.raises(
        UsageError, match="3 members to train do not split over mesh.shape.members=2"
    ):
        preflight_population(configs, [tmp_path / str(i) for i in range(3)])
    assert make_mesh({"members": 2, "data": -1}).shape == {"members": 2, "data": 4, "fsdp": 1}

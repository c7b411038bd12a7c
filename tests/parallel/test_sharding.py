"""The mesh from the config and the state's sharding strategies, on 8 simulated CPU devices.

The references are independent of the code under test: shapes and specs worked out by hand, a
run on one device (whose batch-norm statistics are the global batch's by construction), and the
saved arrays themselves for checkpoints restored under another layout.
"""

import json
import shutil

import grain
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from bnresearch import data
from bnresearch.checkpoint.manager import Checkpointer
from bnresearch.config.defaults import base_config
from bnresearch.errors import UsageError
from bnresearch.parallel.mesh import global_batch, make_mesh, resolve_shape
from bnresearch.parallel.sharding import bytes_per_device, check_sharding_config, state_shardings
from bnresearch.train import loop, preflight
from bnresearch.train.loop import train_and_evaluate
from tests.train.runs import StopAt, final_state, read_metrics, tiny_config

# ---------------------------------------------------------------------------------------------
# The mesh's shape


@pytest.mark.parametrize(
    "shape, devices, sizes",
    [
        ({"data": -1}, 8, (1, 8, 1)),
        ({"data": -1, "fsdp": 2}, 8, (1, 4, 2)),
        ({"data": 4, "fsdp": -1}, 8, (1, 4, 2)),
        ({"data": 1, "fsdp": 8}, 8, (1, 1, 8)),
        ({"fsdp": 4}, 4, (1, 1, 4)),
        ({"data": -1, "fsdp": 1}, 1, (1, 1, 1)),
        ({"members": 2, "data": -1}, 8, (2, 4, 1)),
        ({"members": -1, "data": 1, "fsdp": 2}, 8, (4, 1, 2)),
    ],
)
def test_mesh_sizes_resolve_minus_one_to_the_devices_left(shape, devices, sizes):
    assert resolve_shape(shape, devices) == sizes


@pytest.mark.parametrize(
    "shape, message",
    [
        ({"data": 3, "fsdp": 2}, "does not tile the 8 devices present"),
        ({"data": -1, "fsdp": 3}, "does not tile the 8 devices present"),
        ({"data": -1, "fsdp": -1}, "-1 for at most one axis"),
        ({"data": 0, "fsdp": -1}, "use positive sizes"),
        ({"data": -2, "fsdp": 4}, "use positive sizes"),
        (
            {"data": -1, "model": 2},
            "unknown mesh axis 'model' in mesh.shape; valid: members, data, fsdp",
        ),
    ],
)
def test_a_shape_the_devices_cannot_take_is_refused_in_one_line(shape, message):
    with pytest.raises(UsageError, match=message) as error:
        resolve_shape(shape, 8)
    assert "\n" not in str(error.value)


def test_each_process_devices_hold_a_contiguous_run_of_the_batch():
    # Devices in JAX's order fill the mesh row-major: the batch's slices follow that order.
    mesh = make_mesh({"data": 2, "fsdp": 4})
    batch = global_batch({"x": np.arange(16)}, mesh)["x"]
    owner = {shard.device: shard.data for shard in batch.addressable_shards}
    slices = [np.asarray(owner[device]).tolist() for device in jax.devices()]
    assert slices == [[2 * i, 2 * i + 1] for i in range(8)]


# ---------------------------------------------------------------------------------------------
# Strategies and rules, on shapes worked out by hand


def settings(**fields):
    config = base_config()
    config.sharding.update(fields)
    return config.sharding


def specs(tree, mesh, **fields):
    shardings = state_shardings(tree, mesh, settings(**fields))
    return jax.tree.map(lambda s: s.spec, shardings)


SHAPES = {
    "conv": jax.ShapeDtypeStruct((3, 3, 64, 128), np.float32),  # 73,728 elements
    "dense": jax.ShapeDtypeStruct((90, 10), np.float32),  # neither dimension divides by 4
    "head": jax.ShapeDtypeStruct((512, 12), np.float32),  # 6,144 elements
    "gain": jax.ShapeDtypeStruct((128,), np.float32),
    "step": jax.ShapeDtypeStruct((), np.int32),
}


def test_fsdp_splits_the_largest_divisible_dimension_of_large_tensors_only():
    mesh = make_mesh({"data": 2, "fsdp": 4})
    got = specs(SHAPES, mesh, strategy="fsdp", min_size=4096)
    assert got == {
        "conv": PartitionSpec(None, None, None, "fsdp"),  # 128 output channels, not 64 inputs
        "dense": PartitionSpec(),  # 90 x 10: 4 divides neither
        "head": PartitionSpec("fsdp"),  # 512 rows; 12 columns divide too but are fewer
        "gain": PartitionSpec(),  # 128 < min_size
        "step": PartitionSpec(),
    }
    assert specs(SHAPES, mesh, strategy="fsdp", min_size=0)["gain"] == PartitionSpec("fsdp")
    # Replicated, or an fsdp axis of one device, splits nothing.
    for got in (specs(SHAPES, mesh), specs(SHAPES, make_mesh(), strategy="fsdp", min_size=0)):
        assert set(got.values()) == {PartitionSpec()}


def test_bytes_per_device_count_each_device_share():
    mesh = make_mesh({"data": 2, "fsdp": 4})
    shardings = state_shardings(SHAPES, mesh, settings(strategy="fsdp", min_size=4096))
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), SHAPES, shardings
    )
    # A quarter of the conv kernel; the rest whole, 4 bytes an element.
    by_hand = 4 * (3 * 3 * 64 * 32 + 90 * 10 + 512 * 12 // 4 + 128 + 1)
    assert bytes_per_device(abstract) == by_hand


def test_rules_come_first_in_order_and_the_strategy_takes_the_rest():
    mesh = make_mesh({"data": 2, "fsdp": 4})
    rules = (("conv", (None, None, "fsdp")), ("conv|head", ("data",)))
    got = specs(SHAPES, mesh, strategy="fsdp", min_size=0, rules=rules)
    assert got["conv"] == PartitionSpec(None, None, "fsdp")  # the first rule that matches
    assert got["head"] == PartitionSpec("data")
    assert got["gain"] == PartitionSpec("fsdp")  # no rule: the strategy
    # Paths join their keys with '/', list indices included.
    tree = {"opt_state": [{"trace": {"conv": SHAPES["conv"]}}]}
    got = specs(tree, mesh, rules=((r"^opt_state/0/trace/conv$", (None, None, ("data", "fsdp"))),))
    assert got["opt_state"][0]["trace"]["conv"] == PartitionSpec(None, None, ("data", "fsdp"))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"strategy": "zero3"}, "unknown sharding.strategy 'zero3'; valid: replicated, fsdp"),
        ({"rules": (("conv",),)}, r"sharding.rules\[0\]=.* is not a \(pattern, spec\) pair"),
        ({"rules": (("conv(", ("fsdp",)),)}, r"pattern 'conv\(' is not a regex"),
        ({"rules": (("conv", ("model",)),)}, "names an axis the mesh does not have; valid: "),
    ],
)
def test_a_bad_strategy_or_rule_is_refused_in_one_line(fields, message):
    with pytest.raises(UsageError, match=message) as error:
        check_sharding_config(settings(**fields))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "rule, message",
    [
        (("dense", ("fsdp",)), r"splits dense of shape \(90, 10\) .*: 90 does not divide over 4"),
        (("gain", (None, "fsdp")), "of more dimensions"),
    ],
)
def test_a_rule_that_does_not_fit_its_tensor_is_refused_in_one_line(rule, message):
    mesh = make_mesh({"data": 2, "fsdp": 4})
    with pytest.raises(UsageError, match=message) as error:
        specs(SHAPES, mesh, rules=(rule,))
    assert "\n" not in str(error.value)


def test_a_rule_that_does_not_fit_is_refused_before_the_workdir_exists(tmp_path, data_dir):
    config = tiny_config(
        data_dir, **{"mesh.shape.fsdp": 8, "sharding.rules": (("head/bias", ("fsdp",)),)}
    )
    with pytest.raises(UsageError, match=r"sharding.rules\[0\] splits params/head/bias .*: 10 "):
        train_and_evaluate(config, str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()


# ---------------------------------------------------------------------------------------------
# The numbers: fsdp on 8 devices against one device

# A CNN small enough to compile in a few seconds, sharded or not.
SMALL_CNN = {"model.options.widths": (8, 16), "model.options.convs_per_stage": 1}
# Every normalization whose forward pass reads the batch's statistics.
BATCH_STATISTIC_NORMS = ("batch", "ghost_batch", "batch_renorm", "batch_kalman", "batch_layer")
STEPS = 3


def train_a_few_steps(config, mesh):
    """STEPS updates of `config` on fixed random batches, compiled by the loop's own code."""
    setup = preflight.resolve(config, data.load_dataset(config.dataset), mesh)
    compiled = loop.compile_steps(setup, start_step=0).train[config.batch_size]
    rng = np.random.default_rng(0)
    image_shape = setup.dataset.info.image_shape
    batches = [
        global_batch(
            {
                "image": rng.standard_normal((config.batch_size, *image_shape), np.float32),
                "label": rng.integers(0, 10, config.batch_size, dtype=np.int32),
            },
            mesh,
        )
        for _ in range(STEPS)
    ]
    state = jax.jit(setup.init, out_shardings=setup.layout.sharding)(
        jax.random.PRNGKey(0), batches[0]["image"]
    )
    losses = []
    for batch in batches:
        state, metrics = compiled(state, batch)
        losses.append(metrics["loss"])
    return state, np.array(losses)


@pytest.mark.parametrize("norm", BATCH_STATISTIC_NORMS)
def test_fsdp_on_eight_devices_gives_the_numbers_of_one_device(norm, data_dir):
    """Batch statistics stay those of the global batch: the one-device run sees all of it."""
    fields = {"model.norm": norm, "sharding.strategy": "fsdp", "sharding.min_size": 0}
    if norm == "ghost_batch":
        fields["model.norm_kwargs.virtual_batch_size"] = 8
    config = tiny_config(data_dir, **fields, **SMALL_CNN, **{"mesh.shape.fsdp": 4})
    sharded, sharded_losses = train_a_few_steps(config, make_mesh({"data": 2, "fsdp": 4}))
    single, single_losses = train_a_few_steps(config, make_mesh(devices=jax.devices()[:1]))

    kernel = sharded.params["stage1_conv1"]["kernel"]  # 3x3x1x8: split over 8 output channels
    assert kernel.sharding.spec == PartitionSpec(None, None, None, "fsdp")
    assert {shard.data.shape for shard in kernel.addressable_shards} == {(3, 3, 1, 2)}
    # Float reassociation only: the sharded reductions sum in another order.
    np.testing.assert_allclose(sharded_losses, single_losses, rtol=1e-5)
    for ours, reference in zip(
        jax.tree.leaves((sharded.params, sharded.batch_stats)),
        jax.tree.leaves((single.params, single.batch_stats)),
    ):
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Checkpoints under another layout


def counting_iterator():
    """A grain iterator over 0, 1, 2, ...: its position goes with the checkpoint."""
    return iter(grain.MapDataset.range(100).to_iter_dataset())


LAYOUTS = {
    "fsdp on 8": ({"data": 2, "fsdp": 4}, "fsdp", 8),
    "replicated on 8": ({"data": -1}, "replicated", 8),
    "fsdp on 4": ({"fsdp": 4}, "fsdp", 4),
    "replicated on 4": ({"data": -1}, "replicated", 4),
    "one device": ({"data": -1}, "replicated", 1),
}


def abstract_state(state_shapes, layout):
    shape, strategy, devices = LAYOUTS[layout]
    mesh = make_mesh(shape, devices=jax.devices()[:devices])
    shardings = state_shardings(state_shapes, mesh, settings(strategy=strategy, min_size=0))
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_shapes, shardings
    )


@pytest.mark.parametrize(
    "saved, restored",
    [
        ("fsdp on 8", "replicated on 8"),
        ("replicated on 8", "fsdp on 8"),
        ("fsdp on 8", "fsdp on 4"),
        ("fsdp on 4", "replicated on 4"),
        ("fsdp on 8", "one device"),
        ("one device", "fsdp on 8"),
    ],
)
def test_a_checkpoint_restores_exactly_under_another_layout(saved, restored, tmp_path):
    rng = np.random.default_rng(0)
    values = {
        "params": {"kernel": rng.standard_normal((3, 3, 16, 32), np.float32)},
        "opt_state": {"trace": rng.standard_normal((3, 3, 16, 32), np.float32)},
        "scale": rng.standard_normal((32,), np.float32),
        "step": np.int32(12),
    }
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), values)
    state = jax.tree.map(
        lambda x, a: jax.device_put(x, a.sharding), values, abstract_state(shapes, saved)
    )
    iterator = counting_iterator()
    for _ in range(7):
        next(iterator)
    checkpointer = Checkpointer(tmp_path, keep=1)
    checkpointer.save(12, state, iterator, {"elapsed_s": 1.0})
    checkpointer.close()

    target = abstract_state(shapes, restored)
    iterator = counting_iterator()
    checkpointer = Checkpointer(tmp_path, keep=1)
    step, restored_state, _ = checkpointer.restore_latest(target, iterator)
    checkpointer.close()
    assert step == 12 and next(iterator) == 7
    for got, want, expected in zip(
        jax.tree.leaves(restored_state), jax.tree.leaves(values), jax.tree.leaves(target)
    ):
        assert got.sharding == expected.sharding
        np.testing.assert_array_equal(np.asarray(got), want)


# ---------------------------------------------------------------------------------------------
# Runs through the loop

FSDP = {"mesh.shape.fsdp": 4, "sharding.strategy": "fsdp", "sharding.min_size": 0}
RUN = {
    "train_duration": "12 steps",
    "eval_every": "6 steps",
    "checkpoint.every": "6 steps",
    **SMALL_CNN,
}


@pytest.fixture(scope="module")
def uninterrupted_fsdp(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("fsdp") / "work"
    assert train_and_evaluate(tiny_config(data_dir, **FSDP, **RUN), str(workdir)) == "done"
    return workdir


def test_an_fsdp_run_resumes_bitwise(uninterrupted_fsdp, tmp_path, data_dir, monkeypatch):
    config = tiny_config(data_dir, **FSDP, **RUN)
    monkeypatch.setattr("bnresearch.train.loop.PreemptionWatch", lambda: StopAt(4))
    assert train_and_evaluate(config, str(tmp_path)) == "preempted"
    monkeypatch.setattr("bnresearch.train.loop.PreemptionWatch", lambda: StopAt(-1))
    assert train_and_evaluate(config, str(tmp_path)) == "done"
    assert read_metrics(tmp_path) == read_metrics(uninterrupted_fsdp)
    for got, want in zip(
        jax.tree.leaves(final_state(tmp_path)), jax.tree.leaves(final_state(uninterrupted_fsdp))
    ):
        np.testing.assert_array_equal(got, want)


def test_a_run_resumes_under_another_layout_as_the_same_experiment(
    uninterrupted_fsdp, tmp_path, data_dir
):
    # The fsdp run as if killed after its checkpoint at step 6, resumed replicated.
    workdir = tmp_path / "work"
    shutil.copytree(uninterrupted_fsdp, workdir)
    shutil.rmtree(workdir / "checkpoints" / "12")
    (workdir / "status.json").write_text(json.dumps({"status": "running", "step": 6}))
    replicated = tiny_config(data_dir, **RUN)
    assert train_and_evaluate(replicated, str(workdir)) == "done"

    records = json.loads((workdir / "environment.json").read_text())
    assert [(r["mesh"], r["sharding"]["strategy"]) for r in records] == [
        ({"members": 1, "data": 2, "fsdp": 4}, "fsdp"),
        ({"members": 1, "data": 8, "fsdp": 1}, "replicated"),
    ]
    resumed, reference = read_metrics(workdir), read_metrics(uninterrupted_fsdp)
    assert [r.keys() for r in resumed] == [r.keys() for r in reference]
    for ours, theirs in zip(resumed, reference):
        for key in ours:
            np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-4, err_msg=key)

"""Every normalization inside the models: the same outputs and state on 8 simulated devices as
on 1, batch size 1 (works where the math allows, a one-line UsageError at build time where it does
not), a few real train steps on real digits for every (model, normalization), and the small
initial gain recipe of Davis & Frank driven by the config alone. The deeper ResNets, resnet20's
code with more blocks, are traced with every normalization in tests/models."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bnresearch.config.defaults import base_config
from bnresearch.data.dataset import load_dataset
from bnresearch.data.pipeline import make_train_iterator
from bnresearch.errors import UsageError
from bnresearch.layers import NORMALIZATIONS
from bnresearch.layers.variables import STATE
from bnresearch.models import build_model, model_from_config
from bnresearch.optim.optimizers import make_optimizer
from bnresearch.train.preflight import check_config
from bnresearch.train.state import create_train_state
from bnresearch.train.steps import train_step
from tests.data.datatest_utils import make_config

TINY_MODELS = {
    "mlp": {"hidden_sizes": (16, 16)},
    "cnn": {"widths": (8, 16), "convs_per_stage": 1},
    "resnet20": {},
}
# Options the small batches of these tests need (the defaults suit real runs).
TEST_OPTIONS = {"group": {"num_groups": 4}, "ghost_batch": {"virtual_batch_size": 4}}
# Variants whose statistics are taken over the batch, so that (N, C) features at batch size 1
# leave one value per channel.
BATCH_STATISTICS = {"batch", "ghost_batch", "batch_renorm", "batch_kalman"}

SHARDING_CASES = [(name, TEST_OPTIONS.get(name, {})) for name in NORMALIZATIONS] + [
    ("batch", {"momentum_convention": "pytorch", "eval_statistics": "batch"}),
    ("ghost_batch", {"virtual_batch_size": 2}),  # one virtual batch per device
    ("ghost_batch", {"virtual_batch_size": 8}),  # virtual batches across devices
    ("weight", {"mean_only_batch_norm": True}),
]


@pytest.mark.parametrize("name, options", SHARDING_CASES)
def test_eight_devices_give_what_one_device_gives(name, options):
    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py should simulate 8 CPU devices"
    model = build_model(
        "cnn",
        num_classes=4,
        norm=name,
        norm_kwargs=options,
        images_per_epoch=64,
        **TINY_MODELS["cnn"],
    )
    rng = np.random.default_rng(0)
    # a different offset on each device's examples, so per-device statistics would differ
    x = (
        rng.normal(size=(16, 8, 8, 1)) + np.repeat(np.arange(8) * 3.0, 2)[:, None, None, None]
    ).astype(np.float32)

    @jax.jit
    def run(x):
        variables = model.init(jax.random.key(0), x, train=True)
        state = {key: variables[key] for key in ("params", STATE) if key in variables}
        y, updates = model.apply(state, x, train=True, mutable=[STATE, "aux_loss", "analysis"])
        evaluated = model.apply(
            {**state, **{k: v for k, v in updates.items() if k == STATE}}, x, train=False
        )
        return state, y, updates, evaluated

    mesh = Mesh(np.array(devices), ("data",))
    x_sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    assert len(x_sharded.sharding.device_set) == 8
    sharded = run(x_sharded)
    single = run(jax.device_put(x, devices[0]))
    assert jax.tree.structure(sharded) == jax.tree.structure(single)
    for got, expected in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(
    "name, options",
    [(name, TEST_OPTIONS.get(name, {})) for name in NORMALIZATIONS]
    + [("weight", {"data_dependent_init": False})],
)
def test_batch_size_one(name, options):
    if name == "ghost_batch":
        options = {"virtual_batch_size": 1}
    build = functools.partial(
        build_model,
        num_classes=10,
        norm=name,
        norm_kwargs=options,
        batch_sizes=[1],
        eval_batch_size=1,
        image_shape=(8, 8, 1),
    )
    one_value_per_channel = pytest.raises(UsageError, match="one value per channel")
    if name == "weight" and options.get("data_dependent_init", True):
        # the data-dependent init divides by a std over the batch, and every model ends with a
        # weight-normalized dense layer: refused whatever the model
        for model_name in ("mlp", "cnn"):
            with one_value_per_channel as error:
                build(model_name, **TINY_MODELS[model_name])
            assert "\n" not in str(error.value)
        return
    if name in BATCH_STATISTICS:
        # dense (N, C) features at N = 1: one value per channel, refused in one line at build
        with one_value_per_channel as error:
            build("mlp", **TINY_MODELS["mlp"])
        assert "\n" not in str(error.value)
    elif name != "instance":  # instance norm refuses dense features at any batch size
        build("mlp", **TINY_MODELS["mlp"])
    # conv features keep H x W values per channel: every variant trains at batch size 1
    model = build("cnn", **TINY_MODELS["cnn"])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 8, 8, 1)), jnp.float32)
    optimizer = optax.sgd(0.01)
    state = create_train_state(model, optimizer, jax.random.key(0), x)
    state, metrics = jax.jit(
        functools.partial(
            train_step, model=model, optimizer=optimizer, learning_rate_fn=lambda step: 0.01
        )
    )(state, {"image": x, "label": jnp.asarray([3])})
    assert np.isfinite(metrics["loss"])


def test_ghost_batch_sizes_are_checked_by_the_config_check():
    config = base_config()
    config.model.norm = "ghost_batch"
    config.batch_size = 100
    with pytest.raises(
        UsageError,
        match="batch_size=100 does not split into virtual batches of virtual_batch_size=128",
    ):
        check_config(config)
    config.model.norm_kwargs.virtual_batch_size = 25
    check_config(config)


@pytest.fixture(scope="module")
def digits_batch(data_dir):
    dataset = load_dataset(make_config("digits", data_dir))
    batch = next(make_train_iterator(dataset, seed=0, batch_size=16))
    return jax.tree.map(jnp.asarray, batch), dataset.info


@pytest.mark.parametrize("name", list(NORMALIZATIONS))
@pytest.mark.parametrize("model_name", list(TINY_MODELS))
def test_every_model_trains_with_every_normalization_on_digits(model_name, name, digits_batch):
    batch, info = digits_batch
    build = functools.partial(
        build_model,
        model_name,
        num_classes=info.num_classes,
        norm=name,
        norm_kwargs=TEST_OPTIONS.get(name),
        batch_sizes=[16],
        eval_batch_size=16,
        images_per_epoch=info.num_train,
        image_shape=info.image_shape,
        **TINY_MODELS[model_name],
    )
    if model_name == "mlp" and name == "instance":
        with pytest.raises(UsageError, match="instance norm"):
            build()
        return
    model = build()
    optimizer = optax.sgd(0.01, momentum=0.9)
    step = functools.partial(
        train_step, model=model, optimizer=optimizer, learning_rate_fn=lambda step: 0.01
    )

    @jax.jit
    def train(batch):
        """Init and three steps in one program: one compilation instead of two."""
        state = create_train_state(model, optimizer, jax.random.key(0), batch["image"])
        state, metrics = jax.lax.scan(lambda state, _: step(state, batch), state, length=3)
        return state, metrics["loss"]

    state, losses = train(batch)
    assert np.all(np.isfinite(losses)) and int(state.step) == 3


def test_small_initial_gain_recipe_from_the_config_alone():
    """Davis & Frank: gamma starts at 0.1, learns 100x slower, and neither normalization
    parameters nor biases decay, while kernels decay with 1e-4. One SGD step against the same
    step without the recipe's lr multiplier and decay mask, computed by hand."""
    config = base_config()
    config.model.name = "cnn"
    config.model.options.widths = (4, 8)
    config.model.options.convs_per_stage = 1
    config.model.norm_kwargs.scale_init = 0.1
    config.optimizer.name = "sgd"
    config.optimizer.lr_multipliers.scale = 0.01
    config.optimizer.weight_decay_on = "kernels"
    config.optimizer.weight_decay = 1e-4
    config.lock()
    lr = 0.5
    model = model_from_config(config.model, num_classes=10)
    optimizer = make_optimizer(config.optimizer, lambda step: lr)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8, 8, 1)), jnp.float32)
    batch = {"image": x, "label": jnp.arange(8) % 10}
    state = create_train_state(model, optimizer, jax.random.key(0), x)
    gammas = {
        path: leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)
        if path[-1].key == "scale"
    }
    assert len(gammas) == 2 and all(np.all(leaf == np.float32(0.1)) for leaf in gammas.values())

    def loss(params):
        logits, _ = model.apply(
            {"params": params, STATE: state.batch_stats}, x, train=True, mutable=[STATE]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    grads = jax.jit(jax.grad(loss))(state.params)
    new_state, _ = jax.jit(
        functools.partial(
            train_step, model=model, optimizer=optimizer, learning_rate_fn=lambda step: lr
        )
    )(state, batch)
    for (path, old), new, grad in zip(
        jax.tree_util.tree_leaves_with_path(state.params),
        jax.tree.leaves(new_state.params),
        jax.tree.leaves(grads),
    ):
        old, grad = np.asarray(old, np.float64), np.asarray(grad, np.float64)
        if old.ndim >= 2:
            expected = old - lr * (grad + 1e-4 * old)  # kernels: full lr, decayed
        elif path[-1].key == "scale":
            expected = old - 0.01 * lr * grad  # gammas: lr / 100, no decay
        else:
            expected = old - lr * grad  # betas and biases: no decay
        np.testing.assert_allclose(
            new, expected, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path)
        )

"""Model registry: shapes, CIFAR ResNet parameter counts against the published ones and a
closed-form count, every model family x normalization and x activation, bfloat16 compute, the
option-A shortcut, errors raised at build time, and every model building each forward pass from
the kit of that pass. (The rest of the zoo: test_zoo.py.)"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnresearch.errors import UsageError
from bnresearch.layers import ACTIVATIONS, NORMALIZATIONS, get_activation, get_normalization
from bnresearch.layers.kit import LayerKit
from bnresearch.layers.normalization.kalman import BatchKalmanNorm, KalmanConv, KalmanDense
from bnresearch.layers.variables import STATE
from bnresearch.models import MODEL_NAMES, MODELS, build_model
from bnresearch.models.cifar_resnet import BasicBlock

NUM_CLASSES = 10
RESNET_DEPTHS = (20, 32, 44, 56, 110)
# He et al. 2016, table 6 (option A shortcuts)
PUBLISHED_RESNET_PARAMS = {20: 0.27e6, 32: 0.46e6, 44: 0.66e6, 56: 0.85e6, 110: 1.7e6}
# group norm's default 32 groups do not divide the ResNets' 16-channel stage, 4 not the 10
# normalized logits of the BNN models
# ghost batch norm: the tests' batches of 2 need virtual batches of at most 2
NORM_KWARGS = {"group": {"num_groups": 2}, "ghost_batch": {"virtual_batch_size": 2}}
STATEFUL_NORMS = {"batch", "ghost_batch", "batch_renorm", "batch_kalman", "batch_layer"}
# Models where some normalized features of an 8x8 input have a single value per channel and
# example (dense layers, or maps pooled down to 1x1): instance statistics are refused there
ONE_VALUE_PER_CHANNEL = ("mlp", "bnn_mlp", "bnn_vgg", "resnet18", "resnet50", "vgg11")
# One entry per model family, small where options allow (every norm and activation reaches every
# layer through the kit, whatever the size), with the number of activations it applies, counted
# from its description.
FAMILIES = {
    "mlp": ({}, 2),  # one per hidden layer
    "cnn": ({}, 6),  # 3 stages x 2 convs
    "resnet20": ({}, 19),  # stem + 9 blocks x 2
    "preact_resnet20": ({}, 19),  # 9 blocks x 2 + the final one
    "wrn": ({"depth": 10, "width": 2}, 7),  # 3 blocks x 2 + the final one
    "resnet18": ({}, 17),  # stem + 8 blocks x 2
    "resnet50": ({}, 49),  # stem + 16 bottlenecks x 3
    "vgg11": ({}, 9),  # 8 convs + the classifier's hidden layer
    # stem + 2 A modules x 7 convs + reduction 4 + 2 B modules x 10
    "inception": ({"base_width": 4}, 39),
    "bnn_mlp": ({"hidden_sizes": (32, 32)}, 2),
    "bnn_vgg": ({"widths": (8, 16, 32), "hidden_sizes": (32,)}, 7),  # 6 convs + 1 dense
}
# Traced in every test below but this one: 1001 layers cost seconds to trace; it is
# preact_resnet164's code with more blocks.
SLOW_TO_TRACE = ("preact_resnet1001",)


def count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@functools.cache
def abstract_init(name, input_shape, shortcut=None):
    """Shapes and dtypes of the variables and train-mode logits, without computing anything."""
    options = {"shortcut": shortcut} if shortcut else {}
    model = build_model(name, num_classes=NUM_CLASSES, **options)
    return jax.eval_shape(
        functools.partial(model.init_with_output, train=True),
        jax.random.key(0),
        jnp.zeros(input_shape),
    )


@pytest.mark.parametrize("input_shape", [(2, 8, 8, 1), (2, 32, 32, 3)])
@pytest.mark.parametrize("name", [name for name in MODEL_NAMES if name not in SLOW_TO_TRACE])
def test_output_shape(name, input_shape):
    logits, variables = abstract_init(name, input_shape)
    assert logits.shape == (2, NUM_CLASSES) and logits.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))


def closed_form_resnet_params(depth, projection=False):
    """Parameters of He et al.'s CIFAR ResNet with batch norm, counted from the paper's text."""
    blocks = (depth - 2) // 6
    conv3x3 = lambda c_in, c_out: 9 * c_in * c_out
    norm = lambda c: 2 * c  # scale and bias
    total = conv3x3(3, 16) + norm(16)
    c_in = 16
    for width in (16, 32, 64):
        for _ in range(blocks):
            total += conv3x3(c_in, width) + conv3x3(width, width) + 2 * norm(width)
            if projection and c_in != width:
                total += c_in * width + norm(width)
            c_in = width
    return total + 64 * NUM_CLASSES + NUM_CLASSES


@pytest.mark.parametrize("depth", RESNET_DEPTHS)
def test_resnet_parameter_count(depth):
    _, variables = abstract_init(f"resnet{depth}", (2, 32, 32, 3))
    params = count(variables["params"])
    assert params == closed_form_resnet_params(depth)
    assert abs(params / PUBLISHED_RESNET_PARAMS[depth] - 1) < 0.02
    _, variables = abstract_init(f"resnet{depth}", (2, 32, 32, 3), shortcut="projection")
    assert count(variables["params"]) == closed_form_resnet_params(depth, projection=True)


def check_init_and_train_forward(model, norm, compute):
    """Init in training mode, then (if `compute`) train- and eval-mode forwards; else only traced
    (eval_shape runs the same code without computing)."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), jnp.float32)
    if compute:
        variables = model.init(jax.random.key(0), x, train=True)
        logits, updates = model.apply(variables, x, train=True, mutable=[STATE])
        assert np.all(np.isfinite(logits))
        assert jax.tree.structure(updates) == jax.tree.structure(
            {STATE: variables[STATE]} if norm in STATEFUL_NORMS else {}
        )
        eval_logits = model.apply({**variables, **updates}, x, train=False)
        assert eval_logits.shape == logits.shape and np.all(np.isfinite(eval_logits))
    else:
        logits, variables = jax.eval_shape(
            functools.partial(model.init_with_output, train=True), jax.random.key(0), x
        )
    assert logits.shape == (2, NUM_CLASSES) and logits.dtype == jnp.float32
    assert (STATE in variables) == (norm in STATEFUL_NORMS)


# Computed for the small models; deeper instances of the same code are traced only, which runs
# the train-mode forward without the cost of computing it.
COMPUTED = ("mlp", "cnn", "resnet20")


def test_families_cover_every_model_class():
    classes = lambda names: {getattr(MODELS[n], "func", MODELS[n]) for n in names}
    assert classes(FAMILIES) == classes(MODEL_NAMES)


@pytest.mark.parametrize("norm", list(NORMALIZATIONS))
@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_model_and_norm_initializes_and_runs_in_train_mode(name, norm):
    model = build_model(
        name,
        num_classes=NUM_CLASSES,
        norm=norm,
        norm_kwargs=NORM_KWARGS.get(norm),
        **FAMILIES[name][0],
    )
    if norm == "instance" and name in ONE_VALUE_PER_CHANNEL:
        with pytest.raises(UsageError, match="instance norm: .* one value per channel"):
            model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), train=True)
        return
    check_init_and_train_forward(model, norm, compute=name in COMPUTED)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_every_activation_runs_in_the_cnn(activation):
    model = build_model("cnn", num_classes=NUM_CLASSES, activation=activation)
    check_init_and_train_forward(model, "batch", compute=True)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_model_takes_its_activations_from_the_kit(name):
    # PReLU has parameters: one slope vector per activation the model applies
    options, num_activations = FAMILIES[name]
    model = build_model(name, num_classes=NUM_CLASSES, activation="prelu", **options)
    _, variables = jax.eval_shape(
        functools.partial(model.init_with_output, train=True),
        jax.random.key(0),
        jnp.zeros((2, 8, 8, 1)),
    )
    slopes = [
        path
        for path, _ in jax.tree_util.tree_leaves_with_path(variables["params"])
        if path[-1].key == "slope"
    ]
    assert len(slopes) == num_activations


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet20"])
def test_bfloat16_compute_with_float32_params_and_logits(name):
    model = build_model(name, num_classes=NUM_CLASSES, dtype=jnp.bfloat16)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), jnp.float32)
    variables = model.init(jax.random.key(0), x, train=True)
    logits, updates = model.apply(variables, x, train=True, mutable=[STATE])
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves((variables, updates)))
    # the matmuls and convolutions themselves run in bfloat16
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
    products = [
        eqn for eqn in jaxpr.eqns if eqn.primitive.name in ("dot_general", "conv_general_dilated")
    ]
    assert products and all(eqn.outvars[0].aval.dtype == jnp.bfloat16 for eqn in products)


def test_pad_shortcut_is_strided_identity_with_zero_channels():
    layers = LayerKit(
        norm_factory=get_normalization("none"), activation_factory=get_activation("relu")
    )
    block = BasicBlock(features=8, strides=2, shortcut="pad", layers=layers)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 4)), jnp.float32)
    variables = block.init(jax.random.key(0), x, train=True)
    assert set(variables["params"]) == {"conv1", "conv2"}  # option A has no parameters
    # with the residual branch zeroed, the block is relu(shortcut(x))
    zeroed = jax.tree.map(jnp.zeros_like, variables)
    expected = np.concatenate([np.maximum(x[:, ::2, ::2, :], 0), np.zeros((2, 3, 3, 4))], axis=-1)
    np.testing.assert_array_equal(block.apply(zeroed, x, train=True), expected)


def test_model_options_reach_the_model():
    _, variables = jax.eval_shape(
        functools.partial(
            build_model("mlp", num_classes=3, hidden_sizes=[7]).init_with_output, train=True
        ),
        jax.random.key(0),
        jnp.zeros((2, 4, 4, 1)),
    )
    assert variables["params"]["dense1"]["kernel"].shape == (16, 7)
    assert variables["params"]["head"]["kernel"].shape == (7, 3)
    model = build_model("cnn", num_classes=3, widths=(8, 16), convs_per_stage=1)
    _, variables = jax.eval_shape(
        functools.partial(model.init_with_output, train=True),
        jax.random.key(0),
        jnp.zeros((2, 8, 8, 1)),
    )
    assert set(variables["params"]) == {
        "stage1_conv1",
        "stage1_conv1_norm",
        "stage2_conv1",
        "stage2_conv1_norm",
        "head",
    }


def test_build_errors_name_the_valid_choices():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "valid models: mlp, cnn, resnet20, resnet32, resnet44, resnet56, resnet110, "
            "preact_resnet20"
        ),
    ):
        build_model("resnet19", num_classes=10)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "'depth' for model 'resnet20'; valid options: shortcut, zero_init_residual"
        ),
    ):
        build_model("resnet20", num_classes=10, depth=32)
    with pytest.raises(ValueError, match="valid options: widths, convs_per_stage"):
        build_model("cnn", num_classes=10, hidden_sizes=(8,))
    with pytest.raises(ValueError, match="valid options: hidden_sizes"):
        build_model("mlp", num_classes=10, widths=(8,))
    with pytest.raises(ValueError, match="valid shortcuts: pad, projection"):
        build_model("resnet20", num_classes=10, shortcut="zeros")
    with pytest.raises(ValueError, match="valid normalizations: batch, ghost_batch, batch_renorm"):
        build_model("cnn", num_classes=10, norm="batchnorm")
    with pytest.raises(
        ValueError,
        match="valid options: heterogeneity_threshold, noise_shift, noise_gain, momentum",
    ):
        build_model("cnn", num_classes=10, norm_kwargs={"moment": 0.9})
    with pytest.raises(ValueError, match="valid activations: relu, leaky_relu, prelu, elu"):
        build_model("cnn", num_classes=10, activation="gelu")
    with pytest.raises(ValueError, match="widths must be a non-empty sequence of positive ints"):
        build_model("cnn", num_classes=10, widths=())
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        build_model("mlp", num_classes=0)
    with pytest.raises(ValueError, match="floating-point dtype"):
        build_model("mlp", num_classes=10, dtype=jnp.int32)
    # caught when building, before any init: 16 channels and the default 32 groups
    with pytest.raises(ValueError, match="16 channels do not divide into num_groups=32"):
        build_model("resnet20", num_classes=10, norm="group")


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet20"])
def test_layers_before_a_normalization_have_a_bias_only_without_one(name):
    def biased_layers(norm):
        _, variables = jax.eval_shape(
            functools.partial(
                build_model(name, num_classes=NUM_CLASSES, norm=norm).init_with_output, train=True
            ),
            jax.random.key(0),
            jnp.zeros((2, 8, 8, 1)),
        )
        return {
            path
            for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
            if path[-1].key == "bias"
            and "norm" not in jax.tree_util.keystr(path)
            and "head" not in jax.tree_util.keystr(path)
        }

    assert biased_layers("batch") == set()
    with_none = biased_layers("none")
    _, variables = abstract_init(name, (2, 8, 8, 1))
    kernels = [
        path
        for path, _ in jax.tree_util.tree_leaves_with_path(variables["params"])
        if path[-1].key == "kernel" and "head" not in jax.tree_util.keystr(path)
    ]
    assert len(with_none) == len(kernels) > 0


@pytest.mark.parametrize("norm", ["weight", "batch_kalman"])
def test_norms_that_bring_their_own_weight_layers_refuse_quantized_ones(norm):
    with pytest.raises(UsageError, match="cannot combine with other replaced weight layers"):
        build_model("cnn", num_classes=NUM_CLASSES, norm=norm, quantization={"method": "bnn"})


def test_kalman_weight_layers_keep_the_configured_init():
    model = build_model(
        "cnn",
        num_classes=NUM_CLASSES,
        norm="batch_kalman",
        widths=(4,),
        weight_init="glorot_uniform",
    )
    variables = jax.eval_shape(
        functools.partial(model.init, train=True), jax.random.key(0), jnp.zeros((2, 8, 8, 1))
    )
    plain = build_model("cnn", num_classes=NUM_CLASSES, widths=(4,), weight_init="glorot_uniform")
    kernels = lambda m: m.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), train=True)["params"][
        "stage1_conv1"
    ]["kernel"]
    assert variables["params"]["stage1_conv1"]["kernel"].shape == (3, 3, 1, 4)
    np.testing.assert_array_equal(kernels(model), kernels(plain))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_model_builds_a_forward_pass_from_the_kit_of_that_pass(name):
    """Batch Kalman norm's layers reach each other through the record of the forward pass, which
    the model's kit of that pass (``LayerKit.for_forward``) hands them: in every model, all its
    weight layers and normalizations hold one record, and the next pass holds a new one."""
    model = build_model(name, num_classes=NUM_CLASSES, norm="batch_kalman", **FAMILIES[name][0])
    passes = []

    def collect(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(
            context.module, (BatchKalmanNorm, KalmanConv, KalmanDense)
        ):
            passes[-1].append(context.module.record)
        return next_fun(*args, **kwargs)

    for _ in range(2):
        passes.append([])
        with nn.intercept_methods(collect):
            jax.eval_shape(
                functools.partial(model.init, train=True),
                jax.random.key(0),
                jnp.zeros((2, 8, 8, 1)),
            )
    first, second = ({id(record) for record in records} for records in passes)
    assert len(passes[0]) > 2 and None not in passes[0]
    assert len(first) == len(second) == 1 and first != second

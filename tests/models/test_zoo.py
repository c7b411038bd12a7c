"""The model zoo: parameter counts against published ones and closed forms (traced with
jax.eval_shape, so they cost no compute), zero-init of residual gains, stochastic depth and
dropout placements inside the models, the self-normalizing switch, quantization reaching every
model's hidden layers, weight-decay masks on these models, and build errors."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnresearch.config.defaults import base_config
from bnresearch.errors import UsageError
from bnresearch.layers import get_activation, get_normalization
from bnresearch.layers.kit import LayerKit
from bnresearch.layers.normalization import BatchNorm
from bnresearch.layers.regularization import AlphaDropout, Dropout, StochasticDepth
from bnresearch.layers.variables import STATE
from bnresearch.models import build_model
from bnresearch.models.preact_resnet import PreActBlock
from bnresearch.optim.optimizers import make_optimizer

CIFAR = (2, 32, 32, 3)  # batch 2: batch norm refuses statistics over one value
DIGITS = (2, 8, 8, 1)


def count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def abstract_params(name, input_shape=CIFAR, num_classes=10, **options):
    model = build_model(name, num_classes=num_classes, **options)
    _, variables = jax.eval_shape(
        functools.partial(model.init_with_output, train=True),
        jax.random.key(0),
        jnp.zeros(input_shape),
    )
    return variables["params"]


def leaves_named(tree, key):
    return [path for path, _ in jax.tree_util.tree_leaves_with_path(tree) if path[-1].key == key]


# --- parameter counts --------------------------------------------------------------------------

# torchvision's documented counts of its ImageNet ResNets (conv weights without biases, batch norm
# gains and shifts, a 1000-way classifier with bias): the "11.7M" and "25.6M" usually quoted.
TORCHVISION_RESNET_PARAMS = {
    18: 11_689_512,
    34: 21_797_672,
    50: 25_557_032,
    101: 44_549_160,
    152: 60_192_808,
}


@pytest.mark.parametrize("depth", list(TORCHVISION_RESNET_PARAMS))
def test_imagenet_resnet_parameter_counts(depth):
    params = abstract_params(f"resnet{depth}", (2, 224, 224, 3), num_classes=1000)
    assert count(params) == TORCHVISION_RESNET_PARAMS[depth]


def conv_bn(c_in, c_out, k=3):
    return k * k * c_in * c_out + 2 * c_out


def closed_form_wrn(depth, width, num_classes=10):
    """Zagoruyko & Komodakis's WRN with batch norm, counted from the paper's description."""
    n = (depth - 4) // 6
    total, c_in = 9 * 3 * 16, 16
    for width_unit in (16, 32, 64):
        c_out = width_unit * width
        for block in range(n):
            total += 2 * c_in + 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out  # bn-conv-bn-conv
            if c_in != c_out:
                total += c_in * c_out  # the 1x1 projection
            c_in = c_out
    return total + 2 * c_in + c_in * num_classes + num_classes  # final bn, classifier


def test_wide_resnet_parameter_count():
    params = count(abstract_params("wrn"))
    assert params == closed_form_wrn(28, 10)
    assert abs(params / 36.5e6 - 1) < 0.005  # the paper's table 4: 36.5M for WRN-28-10
    assert count(abstract_params("wrn", depth=16, width=8)) == closed_form_wrn(16, 8)  # 11.0M


def closed_form_vgg(widths, classifier_width=512, num_classes=10):
    total, c_in = 0, 3
    for c_out in widths:
        total += conv_bn(c_in, c_out)
        c_in = c_out
    if classifier_width:
        total += c_in * classifier_width + 2 * classifier_width
        c_in = classifier_width
    return total + c_in * num_classes + num_classes


VGG_WIDTHS = {
    11: [64, 128, 256, 256, 512, 512, 512, 512],
    16: [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512],
    19: [64, 64, 128, 128] + [256] * 4 + [512] * 8,
}


@pytest.mark.parametrize("depth", list(VGG_WIDTHS))
def test_vgg_parameter_counts(depth):
    assert count(abstract_params(f"vgg{depth}")) == closed_form_vgg(VGG_WIDTHS[depth])
    assert count(abstract_params(f"vgg{depth}", classifier_width=0)) == closed_form_vgg(
        VGG_WIDTHS[depth], classifier_width=0
    )


def test_vgg16_has_about_15_million_parameters():
    assert abs(count(abstract_params("vgg16")) / 15.0e6 - 1) < 0.01


@pytest.mark.parametrize(
    "name, published", [("preact_resnet110", 1.7e6), ("preact_resnet164", 1.7e6)]
)
def test_preact_resnet_parameter_counts(name, published):
    # He et al. 2016b, table 3 (CIFAR-10), given to two digits
    assert abs(count(abstract_params(name)) / published - 1) < 0.03


def closed_form_inception(w, n=7, num_classes=10):
    unit = lambda c_in, c_out, kh, kw: kh * kw * c_in * c_out + 2 * c_out
    total = unit(3, 2 * w, 3, 3)
    c_in = 2 * w
    for _ in range(2):  # module A
        total += (
            unit(c_in, 2 * w, 1, 1)
            + unit(c_in, w, 1, 1)
            + unit(w, 2 * w, 3, 3)
            + unit(c_in, w, 1, 1)
            + unit(w, 2 * w, 3, 3)
            + unit(2 * w, 2 * w, 3, 3)
            + unit(c_in, 2 * w, 1, 1)
        )
        c_in = 8 * w
    total += (
        unit(c_in, 4 * w, 3, 3)
        + unit(c_in, 2 * w, 1, 1)
        + unit(2 * w, 4 * w, 3, 3)
        + unit(4 * w, 4 * w, 3, 3)
    )
    c_in = 16 * w
    for _ in range(2):  # module B
        total += (
            unit(c_in, 4 * w, 1, 1)
            + unit(c_in, 2 * w, 1, 1)
            + unit(2 * w, 2 * w, 1, n)
            + unit(2 * w, 4 * w, n, 1)
            + unit(c_in, 2 * w, 1, 1)
            + 3 * unit(2 * w, 2 * w, 1, n)
            + unit(2 * w, 4 * w, 1, n)
            + unit(c_in, 4 * w, 1, 1)
        )
    return total + 16 * w * num_classes + num_classes


def test_inception_parameter_count():
    assert count(abstract_params("inception")) == closed_form_inception(32)
    assert count(
        abstract_params("inception", base_width=8, factorized_kernel=3)
    ) == closed_form_inception(8, n=3)


def test_bnn_model_parameter_counts():
    # BNN paper section 2.6: the CIFAR-10 ConvNet and the MNIST MLP, with a norm on the logits
    convs = (
        conv_bn(3, 128)
        + conv_bn(128, 128)
        + conv_bn(128, 256)
        + conv_bn(256, 256)
        + conv_bn(256, 512)
        + conv_bn(512, 512)
    )
    dense = (4 * 4 * 512 * 1024 + 2 * 1024) + (1024 * 1024 + 2 * 1024) + (1024 * 10 + 2 * 10)
    assert count(abstract_params("bnn_vgg")) == convs + dense  # 14.0M
    mlp = (784 * 4096 + 2 * 4096) + 2 * (4096 * 4096 + 2 * 4096) + (4096 * 10 + 2 * 10)
    assert count(abstract_params("bnn_mlp", (2, 28, 28, 1))) == mlp


def test_imagenet_resnet_stems_on_small_inputs():
    # the CIFAR stem keeps the resolution: 3x3 conv instead of 7x7, no pool
    imagenet, cifar = (
        abstract_params("resnet18", DIGITS, stem=stem) for stem in ("imagenet", "cifar")
    )
    assert imagenet["stem_conv"]["kernel"].shape == (7, 7, 1, 64)
    assert cifar["stem_conv"]["kernel"].shape == (3, 3, 1, 64)


# --- residual models: zero init, stochastic depth ---------------------------------------------

RESIDUAL_SMALL = {
    "resnet20": {},
    "preact_resnet20": {},
    "wrn": {"depth": 10, "width": 1},
    "resnet18": {"stem": "cifar"},
}


def module_calls(model, x):
    """(module, module path, input shape) for every module call in a training-mode forward, in
    call order, traced only (the modules' attributes and the shapes need no compute)."""
    calls = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            calls.append(
                (context.module, context.module.scope.path, args[0].shape if args else None)
            )
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(
            functools.partial(model.init_with_output, train=True),
            {"params": jax.random.key(0), "dropout": jax.random.key(1)},
            x,
        )
    return calls


def first_layer_call(model, x):
    """(module path, input shape) of the first layer the model calls (the model itself aside)."""
    return next((path, shape) for _, path, shape in module_calls(model, x) if path)


def recorded_calls(model, x, module_type, attribute):
    """(module path, attribute) for every call of a `module_type` module."""
    return [
        (path, getattr(module, attribute))
        for module, path, _ in module_calls(model, x)
        if isinstance(module, module_type)
    ]


@pytest.mark.parametrize("name", list(RESIDUAL_SMALL))
def test_zero_init_residual_zeroes_exactly_the_last_gain_of_each_block(name):
    model = build_model(name, num_classes=10, zero_init_residual=True, **RESIDUAL_SMALL[name])
    gains = {}  # block -> {norm name: initial gain}; None for the stem and head
    for path, scale_init in recorded_calls(model, jnp.zeros(DIGITS), BatchNorm, "scale_init"):
        block = path[0] if "block" in path[0] else None
        gains.setdefault(block, {})[path[-1]] = scale_init
    assert len(gains) > 2
    for block, norms in gains.items():
        residual_norms = sorted(key for key in norms if re.fullmatch(r"norm\d", key))
        for key, scale_init in norms.items():
            is_last = block is not None and key == residual_norms[-1]
            assert scale_init == (0.0 if is_last else 1.0), (block, key)


def test_a_zero_initialized_preact_block_starts_as_the_identity():
    kit = LayerKit(
        norm_factory=get_normalization("batch"), activation_factory=get_activation("relu")
    )
    block = PreActBlock(features=4, strides=1, block="basic", layers=kit, zero_init_residual=True)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 5, 4)), jnp.float32)
    variables = block.init(jax.random.key(0), x, train=True)
    np.testing.assert_array_equal(block.apply(variables, x, train=False), x)


def test_stochastic_depth_survival_decays_linearly_over_the_blocks():
    model = build_model("resnet20", num_classes=10, stochastic_depth=0.5)
    survivals = [
        p for _, p in recorded_calls(model, jnp.zeros(DIGITS), StochasticDepth, "survival")
    ]
    assert survivals == pytest.approx([1 - block / 9 * 0.5 for block in range(1, 10)])


def test_stochastic_depth_in_a_model_is_random_at_train_and_fixed_at_eval():
    options = {"depth": 10, "width": 1}  # three blocks
    model = build_model("wrn", num_classes=10, stochastic_depth=0.5, **options)
    x = jnp.asarray(np.random.default_rng(0).normal(size=DIGITS), jnp.float32)
    variables = model.init(
        {"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=True
    )
    train = lambda key: model.apply(
        variables, x, train=True, mutable=[STATE], rngs={"dropout": key}
    )[0]
    np.testing.assert_array_equal(train(jax.random.key(1)), train(jax.random.key(1)))
    outputs = [train(jax.random.key(seed)) for seed in range(2, 5)]
    assert any(not np.allclose(outputs[0], other) for other in outputs[1:])
    # evaluation needs no random stream and differs from the undropped network by the scaling
    plain = build_model("wrn", num_classes=10, **options)
    assert not np.allclose(
        model.apply(variables, x, train=False), plain.apply(variables, x, train=False)
    )


# --- dropout placements, self-normalizing networks ---------------------------------------------


@pytest.mark.parametrize(
    "name, options, hidden, head",
    [
        ("mlp", {}, 2, 1),  # after each hidden activation
        ("cnn", {}, 6, 1),  # after each conv's activation
        ("wrn", {"depth": 10, "width": 1}, 3, 1),  # between the two convs of each block
        ("resnet20", {}, 9, 1),
        ("resnet18", {"stem": "cifar"}, 8, 1),
        ("vgg11", {}, 3, 2),  # after convs not followed by a pool; before both classifier layers
        ("inception", {"base_width": 2}, 5, 1),  # after each Inception module
        ("bnn_mlp", {"hidden_sizes": (8, 8)}, 2, 1),
        ("bnn_vgg", {"widths": (4, 4, 4), "hidden_sizes": (8,)}, 7, 1),
    ],
)
def test_dropout_placements(name, options, hidden, head):
    model = build_model(
        name, num_classes=10, dropout={"input": 0.2, "hidden": 0.1, "head": 0.4}, **options
    )
    rates = [rate for _, rate in recorded_calls(model, jnp.zeros(DIGITS), Dropout, "rate")]
    assert rates.count(0.1) == hidden and rates.count(0.4) == head
    # input dropout: once, on the images themselves, before any other layer sees them
    assert rates.count(0.2) == 1
    first_layer_path, first_input_shape = first_layer_call(model, jnp.zeros(DIGITS))
    assert first_layer_path == ("input_dropout",) and first_input_shape == DIGITS


def test_self_normalizing_network_uses_lecun_init_and_alpha_dropout():
    model = build_model(
        "mlp",
        num_classes=10,
        activation="selu",
        norm="none",
        self_normalizing=True,
        dropout={"hidden": 0.05},
        hidden_sizes=(512, 512),
    )
    x = jnp.zeros((2, 16, 16, 2))
    calls = recorded_calls(model, x, nn.Module, "__class__")
    dropouts = [cls for _, cls in calls if cls in (Dropout, AlphaDropout)]
    assert dropouts == [AlphaDropout] * 4  # the input, two hidden placements and the head one
    params = model.init(jax.random.key(0), x, train=True)["params"]
    for layer, fan_in in (("dense1", 512), ("dense2", 512), ("head", 512)):
        # LeCun-normal: variance 1 / fan_in (He-normal would be 2 / fan_in); with 5,000+ draws
        # the sample variance is within 5% of it
        assert abs(np.var(params[layer]["kernel"]) * fan_in - 1) < 0.05


# --- quantization in every model ---------------------------------------------------------------

QUANTIZABLE = {
    "cnn": {},
    "resnet20": {},
    "preact_resnet20": {},
    "wrn": {"depth": 10, "width": 1},
    "resnet50": {},
    "vgg11": {},
    "inception": {"base_width": 4},
    "bnn_mlp": {"hidden_sizes": (16, 16)},
    "bnn_vgg": {"widths": (4, 4, 4), "hidden_sizes": (8,)},
}


@pytest.mark.parametrize("name", list(QUANTIZABLE))
def test_quantization_reaches_every_hidden_weight_layer(name):
    plain = abstract_params(name, DIGITS, **QUANTIZABLE[name])
    binarized = abstract_params(name, DIGITS, quantization={"method": "bnn"}, **QUANTIZABLE[name])
    # every weight layer but the first and the last keeps a clipped latent kernel
    assert len(leaves_named(binarized, "latent_kernel")) == len(leaves_named(plain, "kernel")) - 2
    assert len(leaves_named(binarized, "kernel")) == 2
    assert count(binarized) == count(plain)


def test_weight_decay_on_kernels_decays_latent_kernels_but_not_slopes_gains_or_biases():
    model = build_model(
        "bnn_mlp",
        num_classes=10,
        activation="prelu",
        quantization={"method": "bnn"},
        hidden_sizes=(8, 8),
    )
    params = model.init(jax.random.key(0), jnp.ones(DIGITS), train=True)["params"]
    config = base_config().optimizer
    config.update({"name": "sgd", "weight_decay": 0.1, "weight_decay_on": "kernels"})
    optimizer = make_optimizer(config, lambda step: 1.0)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zero_grads, optimizer.init(params), params)
    decayed = {
        jax.tree_util.keystr(path)
        for path, update in jax.tree_util.tree_leaves_with_path(updates)
        if np.any(update != 0)
    }
    kernels = {
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if leaf.ndim >= 2
    }
    assert decayed == kernels and any("latent_kernel" in k for k in kernels)
    for path, update in jax.tree_util.tree_leaves_with_path(updates):
        leaf = functools.reduce(lambda tree, key: tree[key.key], path, params)
        np.testing.assert_allclose(update, -0.1 * leaf if leaf.ndim >= 2 else 0, rtol=1e-6)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        (
            "cnn",
            {"stochastic_depth": 0.5},
            "stochastic_depth needs a model with residual blocks; 'cnn' has none",
        ),
        ("resnet20", {"stochastic_depth": 1.0}, "stochastic_depth must lie in [0, 1)"),
        (
            "cnn",
            {"dropout": {"inputs": 0.2}},
            "unknown model.dropout placement(s) inputs; valid: input, hidden, head",
        ),
        ("cnn", {"dropout": {"head": -0.1}}, "dropout.head must lie in [0, 1)"),
        ("mlp", {"self_normalizing": True}, "self_normalizing needs model.activation 'selu'"),
        (
            "mlp",
            {"self_normalizing": True, "activation": "selu", "weight_init": "he_normal"},
            "self_normalizing uses lecun_normal init; model.weight_init='he_normal' contradicts it",
        ),
        ("mlp", {"weight_init": "xavier"}, "valid: he_normal, lecun_normal, glorot_uniform"),
        ("cnn", {"quantization": {"method": "xnor", "weight_bits": 2}}, "weight_bits must be 1"),
        (
            "cnn",
            {"quantization": {"method": "dorefa", "activation_bits": 0}},
            "activation_bits must be an int from 1 to 32",
        ),
        ("wrn", {"depth": 27}, "wrn: depth must be 6n + 4"),
        ("resnet18", {"stem": "tiny"}, "valid stems: imagenet, cifar"),
        ("vgg16", {"classifier_width": -1}, "classifier_width must be an int >= 0"),
        ("inception", {"factorized_kernel": 4}, "factorized_kernel must be an odd int >= 3"),
        ("bnn_vgg", {"widths": ()}, "widths must be a non-empty sequence of positive ints"),
        # the logits are normalized too: 10 classes do not divide into 4 groups
        (
            "bnn_mlp",
            {"norm": "group", "norm_kwargs": {"num_groups": 4}, "hidden_sizes": (8,)},
            "10 channels do not divide into num_groups=4",
        ),
    ],
)
def test_build_errors(name, kwargs, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        build_model(name, num_classes=10, **kwargs)

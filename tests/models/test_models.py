"""Model registry: shapes, parameter counts against the published ones and a closed-form count,
every model x normalization x activation, bfloat16 compute, the option-A shortcut, and errors
raised at build time."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnresearch.layers import ACTIVATIONS, NORMALIZATIONS, get_activation, get_normalization
from bnresearch.layers.kit import LayerKit
from bnresearch.models import MODEL_NAMES, build_model
from bnresearch.models.cifar_resnet import BasicBlock
from bnresearch.errors import UsageError

NUM_CLASSES = 10
RESNET_DEPTHS = (20, 32, 44, 56, 110)
# He et al. 2016, table 6 (option A shortcuts)
PUBLISHED_RESNET_PARAMS = {20: 0.27e6, 32: 0.46e6, 44: 0.66e6, 56: 0.85e6, 110: 1.7e6}
# group norm's default 32 groups do not divide the ResNets' 16-channel stage; the tests' batches
# of 2 need virtual batches of at most 2
NORM_KWARGS = {'group': {'num_groups': 4}, 'ghost_batch': {'virtual_batch_size': 2}}
STATEFUL_NORMS = {'batch', 'ghost_batch', 'batch_renorm', 'batch_kalman', 'batch_layer'}


def count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@functools.cache
def abstract_init(name, input_shape, shortcut=None):
    """Shapes and dtypes of the variables and train-mode logits, without computing anything."""
    options = {'shortcut': shortcut} if shortcut else {}
    model = build_model(name, num_classes=NUM_CLASSES, **options)
    return jax.eval_shape(functools.partial(model.init_with_output, train=True),
                          jax.random.key(0), jnp.zeros(input_shape))


@pytest.mark.parametrize('input_shape', [(2, 8, 8, 1), (2, 32, 32, 3)])
@pytest.mark.parametrize('name', MODEL_NAMES)
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


@pytest.mark.parametrize('depth', RESNET_DEPTHS)
def test_resnet_parameter_count(depth):
    _, variables = abstract_init(f'resnet{depth}', (2, 32, 32, 3))
    params = count(variables['params'])
    assert params == closed_form_resnet_params(depth)
    assert abs(params / PUBLISHED_RESNET_PARAMS[depth] - 1) < 0.02
    _, variables = abstract_init(f'resnet{depth}', (2, 32, 32, 3), shortcut='projection')
    assert count(variables['params']) == closed_form_resnet_params(depth, projection=True)


# Every normalization with relu and every activation with batch norm: the layers do not interact
# beyond FRN's TLU replacing relu, so the full product would only cost time.
NORMS_AND_ACTIVATIONS = ([(norm, 'relu') for norm in NORMALIZATIONS]
                         + [('batch', activation) for activation in ACTIVATIONS
                            if activation != 'relu'])


@pytest.mark.parametrize('norm, activation', NORMS_AND_ACTIVATIONS)
@pytest.mark.parametrize('name', MODEL_NAMES)
def test_every_model_norm_activation_initializes_and_runs_in_train_mode(name, norm, activation):
    model = build_model(name, num_classes=NUM_CLASSES, norm=norm,
                        norm_kwargs=NORM_KWARGS.get(norm), activation=activation)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), jnp.float32)

    if norm == 'instance' and name == 'mlp':
        # dense features have no spatial axes to take instance statistics over
        with pytest.raises(UsageError, match='instance norm'):
            model.init(jax.random.key(0), x, train=True)
        return
    if name.startswith('resnet') and name != 'resnet20':
        # Deeper instances of resnet20's code: tracing init, which runs the train-mode forward,
        # covers them; computing would only cost time.
        logits, variables = jax.eval_shape(
            functools.partial(model.init_with_output, train=True), jax.random.key(0), x)
    else:
        variables = model.init(jax.random.key(0), x, train=True)
        logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
        assert np.all(np.isfinite(logits))
        assert jax.tree.structure(updates) == jax.tree.structure(
            {'batch_stats': variables['batch_stats']} if norm in STATEFUL_NORMS else {})
        eval_logits = model.apply({**variables, **updates}, x, train=False)
        assert eval_logits.shape == logits.shape and np.all(np.isfinite(eval_logits))
    assert logits.shape == (2, NUM_CLASSES) and logits.dtype == jnp.float32
    assert ('batch_stats' in variables) == (norm in STATEFUL_NORMS)


@pytest.mark.parametrize('name', ['mlp', 'cnn', 'resnet20'])
def test_bfloat16_compute_with_float32_params_and_logits(name):
    model = build_model(name, num_classes=NUM_CLASSES, dtype=jnp.bfloat16)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), jnp.float32)
    variables = model.init(jax.random.key(0), x, train=True)
    logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves((variables, updates)))
    # the matmuls and convolutions themselves run in bfloat16
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
    products = [eqn for eqn in jaxpr.eqns
                if eqn.primitive.name in ('dot_general', 'conv_general_dilated')]
    assert products and all(eqn.outvars[0].aval.dtype == jnp.bfloat16 for eqn in products)


def test_pad_shortcut_is_strided_identity_with_zero_channels():
    layers = LayerKit(norm_factory=get_normalization('none'),
                      activation_factory=get_activation('relu'))
    block = BasicBlock(features=8, strides=2, shortcut='pad', layers=layers)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 4)), jnp.float32)
    variables = block.init(jax.random.key(0), x, train=True)
    assert set(variables['params']) == {'conv1', 'conv2'}  # option A has no parameters
    # with the residual branch zeroed, the block is relu(shortcut(x))
    zeroed = jax.tree.map(jnp.zeros_like, variables)
    expected = np.concatenate([np.maximum(x[:, ::2, ::2, :], 0), np.zeros((2, 3, 3, 4))], axis=-1)
    np.testing.assert_array_equal(block.apply(zeroed, x, train=True), expected)


def test_model_options_reach_the_model():
    _, variables = jax.eval_shape(
        functools.partial(build_model('mlp', num_classes=3, hidden_sizes=[7]).init_with_output,
                          train=True), jax.random.key(0), jnp.zeros((2, 4, 4, 1)))
    assert variables['params']['dense1']['kernel'].shape == (16, 7)
    assert variables['params']['head']['kernel'].shape == (7, 3)
    model = build_model('cnn', num_classes=3, widths=(8, 16), convs_per_stage=1)
    _, variables = jax.eval_shape(functools.partial(model.init_with_output, train=True),
                                  jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
    assert set(variables['params']) == {'stage1_conv1', 'stage1_conv1_norm', 'stage2_conv1',
                                        'stage2_conv1_norm', 'head'}


def test_build_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match=re.escape(
            'valid models: mlp, cnn, resnet20, resnet32, resnet44, resnet56, resnet110')):
        build_model('resnet18', num_classes=10)
    with pytest.raises(ValueError, match=re.escape("'depth' for model 'resnet20'; "
                                                   'valid options: shortcut')):
        build_model('resnet20', num_classes=10, depth=32)
    with pytest.raises(ValueError, match='valid options: widths, convs_per_stage'):
        build_model('cnn', num_classes=10, hidden_sizes=(8,))
    with pytest.raises(ValueError, match='valid options: hidden_sizes'):
        build_model('mlp', num_classes=10, widths=(8,))
    with pytest.raises(ValueError, match='valid shortcuts: pad, projection'):
        build_model('resnet20', num_classes=10, shortcut='zeros')
    with pytest.raises(ValueError, match='valid normalizations: batch, ghost_batch, batch_renorm'):
        build_model('cnn', num_classes=10, norm='batchnorm')
    with pytest.raises(ValueError, match='valid options: heterogeneity_threshold, momentum, epsilon'):
        build_model('cnn', num_classes=10, norm_kwargs={'moment': 0.9})
    with pytest.raises(ValueError, match='valid activations: relu, elu'):
        build_model('cnn', num_classes=10, activation='swish')
    with pytest.raises(ValueError, match='widths must be a non-empty sequence of positive ints'):
        build_model('cnn', num_classes=10, widths=())
    with pytest.raises(ValueError, match='num_classes must be a positive int'):
        build_model('mlp', num_classes=0)
    with pytest.raises(ValueError, match='floating-point dtype'):
        build_model('mlp', num_classes=10, dtype=jnp.int32)
    # caught when building, before any init: 16 channels and the default 32 groups
    with pytest.raises(ValueError, match='16 channels do not divide into num_groups=32'):
        build_model('resnet20', num_classes=10, norm='group')


@pytest.mark.parametrize('name', ['mlp', 'cnn', 'resnet20'])
def test_layers_before_a_normalization_have_a_bias_only_without_one(name):
    def biased_layers(norm):
        _, variables = jax.eval_shape(
            functools.partial(build_model(name, num_classes=NUM_CLASSES, norm=norm)
                              .init_with_output, train=True),
            jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
        return {path for path, leaf in jax.tree_util.tree_leaves_with_path(variables['params'])
                if path[-1].key == 'bias' and 'norm' not in jax.tree_util.keystr(path)
                and 'head' not in jax.tree_util.keystr(path)}

    assert biased_layers('batch') == set()
    with_none = biased_layers('none')
    _, variables = abstract_init(name, (2, 8, 8, 1))
    kernels = [path for path, _ in jax.tree_util.tree_leaves_with_path(variables['params'])
               if path[-1].key == 'kernel' and 'head' not in jax.tree_util.keystr(path)]
    assert len(with_none) == len(kernels) > 0

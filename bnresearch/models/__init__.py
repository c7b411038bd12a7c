"""Models chosen by name.

``build_model`` resolves the normalization and activation by name, checks every name, option and
option value, and returns an unbound linen Module: it computes nothing (given the run's image
shape and batch sizes it traces the model abstractly, shapes only), so it is the cheap up-front
check of a configuration as well. A model family is one module class in its own file;
registering it (or a ``functools.partial`` that fixes some of its fields) below is all it takes.
Every model is called as ``model.apply(variables, x, train=...)`` on channels-last images and
returns float32 logits of shape (N, num_classes).
"""
import functools

import jax
import jax.numpy as jnp
import flax.linen as nn
import ml_collections
from flax.typing import Dtype

from bnresearch.layers.activations import get_activation
from bnresearch.layers.kit import LayerKit
from bnresearch.layers.normalization import (bind_facts, check_normalization_batch_sizes,
                                             check_normalization_features, get_normalization)
from bnresearch.layers.variables import RNG_STREAM, STATE
from bnresearch.layers.registry import ModuleFactory, lookup
from bnresearch.models.cifar_resnet import CifarResNet
from bnresearch.models.cnn import CNN
from bnresearch.models.mlp import MLP
from bnresearch.errors import UsageError

MODELS: dict[str, ModuleFactory] = {
    'mlp': MLP,
    'cnn': CNN,
    **{f'resnet{depth}': functools.partial(CifarResNet, depth=depth)
       for depth in (20, 32, 44, 56, 110)},
}
MODEL_NAMES = tuple(MODELS)

# Fields every model has that build_model fills in itself rather than taking as model options.
BUILD_ARGUMENTS = ('num_classes', 'layers')


def build_model(name: str, *, num_classes: int, norm: str = 'batch',
                norm_kwargs: dict | None = None, activation: str = 'relu',
                activation_kwargs: dict | None = None, dtype: Dtype = jnp.float32,
                batch_size: int | None = None, eval_batch_size: int | None = None,
                train_size: int | None = None, image_shape: tuple[int, ...] | None = None,
                **model_options) -> nn.Module:
    """Model `name` with the named normalization and activation everywhere.

    `dtype` is the compute dtype; parameters stay float32 and logits are float32. Raises a
    one-line UsageError naming the valid choices for an unknown model, normalization, activation
    or option, for an invalid option value, and for a normalization that cannot handle one of the
    model's widths (e.g. group norm with a group count that does not divide it).

    The facts of a run, where given, let the build check what depends on them, still before any
    compute: `batch_size` and `eval_batch_size` (global) for normalizations that need particular
    batch sizes (ghost batch norm's virtual batches); `train_size`, the training examples per
    epoch, for normalizations that count epochs (batch_layer); and with `image_shape` (H, W, C)
    and `batch_size` the model is traced abstractly (shapes only) in training mode at
    `batch_size` and in evaluation mode at `eval_batch_size`, which raises the shape-dependent
    errors, e.g. batch statistics over one value per channel at batch size 1.
    """
    model = lookup('model', MODELS, name, model_options, reserved=BUILD_ARGUMENTS)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise UsageError(f'dtype must be a floating-point dtype, got {dtype!r}')
    norm_factory = bind_facts(get_normalization(norm, **(norm_kwargs or {})),
                              train_size=train_size)
    layers = LayerKit(norm_factory=norm_factory,
                      activation_factory=get_activation(activation, **(activation_kwargs or {})),
                      dtype=dtype)
    # Last: a normalization that replaces other layers (weight norm's weight layers, FRN's
    # activation) sees the kit the config built and refuses what it cannot combine with.
    layers = norm_factory(parent=None).adapt_kit(layers)
    model = model(num_classes=num_classes, layers=layers)
    for num_features in model.normalized_features():
        check_normalization_features(layers.norm_factory, num_features)
    if batch_size is not None:
        check_normalization_batch_sizes(layers.norm_factory, batch_size, eval_batch_size)
        if image_shape is not None:
            trace_at_batch_sizes(model, tuple(image_shape), batch_size, eval_batch_size)
    return model


def trace_at_batch_sizes(model: nn.Module, image_shape: tuple[int, ...], batch_size: int,
                         eval_batch_size: int | None = None) -> None:
    """Traces `model` on abstract images, as training's init and evaluation would call it:
    computes nothing, but raises what tracing raises (UsageErrors of the layers included)."""
    keys = {'params': jax.random.key(0), RNG_STREAM: jax.random.key(1)}
    images = jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=True), keys, images)
    if eval_batch_size is not None:
        state = {key: value for key, value in variables.items() if key in ('params', STATE)}
        jax.eval_shape(functools.partial(model.apply, train=False), state,
                       jax.ShapeDtypeStruct((eval_batch_size, *image_shape), jnp.float32))


def set_options(options: ml_collections.ConfigDict) -> dict:
    """The options a config actually sets: its option blocks hold a placeholder (None) for every
    option of every variant, and None means "the variant's own default"."""
    return {key: value for key, value in options.to_dict().items() if value is not None}


def model_from_config(model_config: ml_collections.ConfigDict, *, num_classes: int,
                      dtype: Dtype = jnp.float32, **facts) -> nn.Module:
    """``build_model`` from the config's ``model`` block (name, norm, activation, their options)
    and the run's `facts` (batch_size, eval_batch_size, train_size, image_shape; see there)."""
    return build_model(
        model_config.name, num_classes=num_classes, norm=model_config.norm,
        norm_kwargs=set_options(model_config.norm_kwargs), activation=model_config.activation,
        activation_kwargs=set_options(model_config.activation_kwargs), dtype=dtype,
        **facts, **set_options(model_config.options))

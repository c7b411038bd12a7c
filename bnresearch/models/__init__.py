"""Models chosen by name.

``build_model`` resolves the normalization and activation by name, checks every name, option and
option value, and returns an unbound linen Module: it does no array work, so it is the cheap
up-front check of a configuration as well. A model family is one module class in its own file;
registering it (or a ``functools.partial`` that fixes some of its fields) below is all it takes.
Every model is called as ``model.apply(variables, x, train=...)`` on channels-last images and
returns float32 logits of shape (N, num_classes).
"""
import functools

import jax.numpy as jnp
import flax.linen as nn
import ml_collections
from flax.typing import Dtype

from bnresearch.layers.activations import get_activation
from bnresearch.layers.kit import LayerKit
from bnresearch.layers.normalization import check_normalization_features, get_normalization
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
                **model_options) -> nn.Module:
    """Model `name` with the named normalization and activation everywhere.

    `dtype` is the compute dtype; parameters stay float32 and logits are float32. Raises a
    one-line UsageError naming the valid choices for an unknown model, normalization, activation
    or option, for an invalid option value, and for a normalization that cannot handle one of the
    model's widths (e.g. group norm with a group count that does not divide it).
    """
    model = lookup('model', MODELS, name, model_options, reserved=BUILD_ARGUMENTS)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise UsageError(f'dtype must be a floating-point dtype, got {dtype!r}')
    layers = LayerKit(norm_factory=get_normalization(norm, **(norm_kwargs or {})),
                      activation_factory=get_activation(activation, **(activation_kwargs or {})),
                      dtype=dtype)
    model = model(num_classes=num_classes, layers=layers)
    for num_features in model.normalized_features():
        check_normalization_features(layers.norm_factory, num_features)
    return model


def set_options(options: ml_collections.ConfigDict) -> dict:
    """The options a config actually sets: its option blocks hold a placeholder (None) for every
    option of every variant, and None means "the variant's own default"."""
    return {key: value for key, value in options.to_dict().items() if value is not None}


def model_from_config(model_config: ml_collections.ConfigDict, *, num_classes: int,
                      dtype: Dtype = jnp.float32) -> nn.Module:
    """``build_model`` from the config's ``model`` block (name, norm, activation, their options)."""
    return build_model(
        model_config.name, num_classes=num_classes, norm=model_config.norm,
        norm_kwargs=set_options(model_config.norm_kwargs), activation=model_config.activation,
        activation_kwargs=set_options(model_config.activation_kwargs), dtype=dtype,
        **set_options(model_config.options))

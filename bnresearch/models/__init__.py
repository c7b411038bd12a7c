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
from flax.typing import Dtype

from bnresearch.layers.activations import get_activation
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
_BUILD_ARGUMENTS = ('num_classes', 'norm', 'activation', 'dtype')


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
    model = lookup('model', MODELS, name, model_options, reserved=_BUILD_ARGUMENTS)
    norm_factory = get_normalization(norm, **(norm_kwargs or {}))
    activation_factory = get_activation(activation, **(activation_kwargs or {}))
    if not jnp.issubdtype(dtype, jnp.floating):
        raise UsageError(f'dtype must be a floating-point dtype, got {dtype!r}')
    model = model(num_classes=num_classes, norm=norm_factory, activation=activation_factory,
                  dtype=dtype)
    for num_features in model.normalized_features():
        check_normalization_features(norm_factory, num_features)
    return model

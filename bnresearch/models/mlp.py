"""A multilayer perceptron: flatten, then (dense -> norm -> activation) per hidden layer, then a
dense classifier. The smallest model on which to compare normalizations (batch norm was
introduced on one, Ioffe & Szegedy 2015, arXiv:1502.03167)."""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn
from flax.typing import Dtype

from bnresearch.layers.normalization import needs_bias_before
from bnresearch.layers.registry import ModuleFactory
from bnresearch.models.common import HE_NORMAL, check_positive_int, check_positive_ints


class MLP(nn.Module):
    """Hidden dense layers have a bias only where the normalization after them adds none."""
    num_classes: int
    norm: ModuleFactory
    activation: ModuleFactory
    dtype: Dtype = jnp.float32
    hidden_sizes: Sequence[int] = (256, 256)

    def __post_init__(self):
        check_positive_int('mlp', 'num_classes', self.num_classes)
        check_positive_ints('mlp', 'hidden_sizes', self.hidden_sizes)
        super().__post_init__()

    @nn.nowrap
    def normalized_features(self) -> tuple[int, ...]:
        """The channel counts the normalization layers see."""
        return tuple(self.hidden_sizes)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for layer, width in enumerate(self.hidden_sizes, start=1):
            x = nn.Dense(width, use_bias=needs_bias_before(self.norm), kernel_init=HE_NORMAL, dtype=self.dtype,
                         name=f'dense{layer}')(x)
            x = self.norm(dtype=self.dtype, name=f'norm{layer}')(x, train=train)
            x = self.activation(name=f'act{layer}')(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x).astype(jnp.float32)

"""A multilayer perceptron: flatten, then (dense -> norm -> activation) per hidden layer, then a
dense classifier. The smallest model on which to compare normalizations (batch norm was
introduced on one, Ioffe & Szegedy 2015, arXiv:1502.03167). Hidden dropout follows each hidden
activation, head dropout comes right before the classifier (Srivastava et al. 2014's places).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnresearch.layers.kit import LayerKit
from bnresearch.models.common import check_positive_int, check_positive_ints


class MLP(nn.Module):
    num_classes: int
    layers: LayerKit
    hidden_sizes: Sequence[int] = (256, 256)

    def __post_init__(self):
        check_positive_int("mlp", "num_classes", self.num_classes)
        check_positive_ints("mlp", "hidden_sizes", self.hidden_sizes)
        super().__post_init__()

    @nn.nowrap
    def normalized_features(self) -> tuple[int, ...]:
        """The channel counts the normalization layers see."""
        return tuple(self.hidden_sizes)

    @nn.nowrap
    def stages(self) -> tuple[tuple[str, ...], ...]:
        """The model's stages in order, input to logits (see ``models.stages``)."""
        hidden = tuple(
            (f"dense{layer}", f"norm{layer}") for layer in range(1, len(self.hidden_sizes) + 1)
        )
        return (*hidden, ("head",))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        layers = self.layers.for_forward()
        x = layers.dropout(name="input_dropout", placement="input")(x, train=train)
        x = x.reshape(x.shape[0], -1)
        for layer, width in enumerate(self.hidden_sizes, start=1):
            role = "first" if layer == 1 else "hidden"
            x = layers.dense(width, role=role, name=f"dense{layer}")(x)
            x = layers.norm(name=f"norm{layer}")(x, train=train)
            x = layers.activation(name=f"act{layer}")(x)
            x = layers.dropout(name=f"dropout{layer}", placement="hidden")(x, train=train)
        x = layers.dropout(name="head_dropout", placement="head")(x, train=train)
        logits = layers.dense(self.num_classes, use_bias=True, role="last", name="head")(x)
        return logits.astype(jnp.float32)

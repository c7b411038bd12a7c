"""A plain (non-residual) convolutional net: stages of 3x3 conv -> norm -> activation, the first
conv of every stage after the first with stride 2, then global average pooling and a dense
classifier. A small all-convolutional design in the spirit of Springenberg et al., "Striving for
Simplicity: The All Convolutional Net", 2015, arXiv:1412.6806 (strided convs instead of pooling).

With the default widths (32, 64, 128) an 8x8 input is seen at 8x8, 4x4 and 2x2, a 32x32 one at
32x32, 16x16 and 8x8. Hidden dropout follows every conv's activation, head dropout comes right
before the classifier.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnresearch.layers.kit import LayerKit
from bnresearch.models.common import check_positive_int, check_positive_ints


class CNN(nn.Module):
    num_classes: int
    layers: LayerKit
    widths: Sequence[int] = (32, 64, 128)
    convs_per_stage: int = 2

    def __post_init__(self):
        check_positive_int("cnn", "num_classes", self.num_classes)
        check_positive_ints("cnn", "widths", self.widths)
        check_positive_int("cnn", "convs_per_stage", self.convs_per_stage)
        super().__post_init__()

    @nn.nowrap
    def normalized_features(self) -> tuple[int, ...]:
        """The channel counts the normalization layers see."""
        return tuple(self.widths)

    @nn.nowrap
    def stages(self) -> tuple[tuple[str, ...], ...]:
        """The model's stages in order, input to logits (see ``models.stages``)."""
        return (*((f"stage{stage}_*",) for stage in range(1, len(self.widths) + 1)), ("head",))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        layers = self.layers.for_forward()
        x = layers.dropout(name="input_dropout", placement="input")(x, train=train)
        for stage, width in enumerate(self.widths, start=1):
            for conv in range(1, self.convs_per_stage + 1):
                strides = 2 if stage > 1 and conv == 1 else 1
                role = "first" if stage == conv == 1 else "hidden"
                layer = f"stage{stage}_conv{conv}"
                x = layers.conv(width, (3, 3), strides=strides, padding=1, role=role, name=layer)(x)
                x = layers.norm(name=f"{layer}_norm")(x, train=train)
                x = layers.activation(name=f"{layer}_act")(x)
                x = layers.dropout(name=f"{layer}_dropout", placement="hidden")(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        x = layers.dropout(name="head_dropout", placement="head")(x, train=train)
        logits = layers.dense(self.num_classes, use_bias=True, role="last", name="head")(x)
        return logits.astype(jnp.float32)

"""ResNets for ImageNet-sized inputs: He, Zhang, Ren & Sun, "Deep Residual Learning for Image
Recognition", CVPR 2016, arXiv:1512.03385, table 1.

A 7x7 stride-2 conv with 64 channels, norm, act and a 3x3 stride-2 max pool, then four stages
(64, 128, 256, 512 channels; stride 2 at the first block of stages 2-4), global average pooling
and a dense classifier. ResNet-18/34 use basic blocks (two 3x3 convs); ResNet-50/101/152 use
bottleneck blocks (1x1, 3x3, 1x1 with 4x wider output), with the stride on the 3x3 conv
("ResNet v1.5", as in torchvision and most reproductions; the paper strides the first 1x1, which
changes no parameter count). Blocks are post-activation: the branch ends in a norm, the sum goes
through the activation. Where a block changes shape the shortcut is a 1x1 conv (strided) and a
norm (the paper's option B); elsewhere the identity. Hidden dropout follows each activation
inside a branch.

Small inputs: the ImageNet stem divides the side by 4 and the stages by 8 more, so at 224 x 224
the last stage sees 7 x 7. Any input of at least 1 pixel runs (padded convs and pools never shrink
a side below 1; an 8x8 digit reaches 1 x 1 at stage 2), but for images below about 64 pixels use
``stem='cifar'``: a 3x3 stride-1 conv and no pool, the usual CIFAR adaptation of ResNet-18, which
keeps 32 x 32 inputs at 32, 16, 8 and 4 through the stages.
"""

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnresearch.errors import UsageError
from bnresearch.layers.kit import LayerKit
from bnresearch.models.common import check_positive_int

STAGE_SIZES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
STAGE_WIDTHS = (64, 128, 256, 512)
STEMS = ("imagenet", "cifar")
BOTTLENECK_EXPANSION = 4


def uses_bottleneck(depth: int) -> bool:
    return depth >= 50


class ResidualBlock(nn.Module):
    """A post-activation basic or bottleneck block; `features` is the width of its 3x3 conv."""

    features: int
    strides: int
    bottleneck: bool
    layers: LayerKit
    zero_init_residual: bool = False
    index: int = 1  # this block's place among all blocks (from 1), for stochastic depth
    num_blocks: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kit = self.layers
        if self.bottleneck:
            out_features = BOTTLENECK_EXPANSION * self.features
            convs = [
                ((1, 1), self.features, 1),
                ((3, 3), self.features, self.strides),
                ((1, 1), out_features, 1),
            ]
        else:
            out_features = self.features
            convs = [((3, 3), self.features, self.strides), ((3, 3), self.features, 1)]
        y = x
        for i, (kernel, features, strides) in enumerate(convs, start=1):
            last = i == len(convs)
            y = kit.conv(
                features, kernel, strides=strides, padding=kernel[0] // 2, name=f"conv{i}"
            )(y)
            y = kit.norm(name=f"norm{i}", zero_scale=last and self.zero_init_residual)(
                y, train=train
            )
            if not last:
                y = kit.activation(name=f"act{i}")(y)
                y = kit.dropout(name=f"dropout{i}", placement="hidden")(y, train=train)
        y = kit.stochastic_depth(name="drop_block", block=self.index, num_blocks=self.num_blocks)(
            y, train=train
        )
        shortcut = x
        if self.strides != 1 or x.shape[-1] != out_features:
            shortcut = kit.conv(out_features, (1, 1), strides=self.strides, name="shortcut_conv")(x)
            shortcut = kit.norm(name="shortcut_norm")(shortcut, train=train)
        return kit.activation(name="act_out")(y + shortcut)


class ResNet(nn.Module):
    num_classes: int
    layers: LayerKit
    depth: int = 50
    stem: str = "imagenet"
    zero_init_residual: bool = False
    has_residual_blocks: ClassVar[bool] = True

    def __post_init__(self):
        check_positive_int("resnet", "num_classes", self.num_classes)
        if self.depth not in STAGE_SIZES:
            raise UsageError(
                f"resnet: depth must be one of {', '.join(map(str, STAGE_SIZES))}, "
                f"got {self.depth!r}"
            )
        if self.stem not in STEMS:
            raise UsageError(f"resnet: unknown stem {self.stem!r}; valid stems: {', '.join(STEMS)}")
        super().__post_init__()

    @nn.nowrap
    def normalized_features(self) -> tuple[int, ...]:
        """The channel counts the normalization layers see."""
        if uses_bottleneck(self.depth):
            return STAGE_WIDTHS + tuple(BOTTLENECK_EXPANSION * w for w in STAGE_WIDTHS)
        return STAGE_WIDTHS

    @nn.nowrap
    def stages(self) -> tuple[tuple[str, ...], ...]:
        """The model's stages in order, input to logits (see ``models.stages``)."""
        return (("stem_*",), *((f"stage{stage}_*",) for stage in range(1, 5)), ("head",))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kit = self.layers.for_forward()
        x = kit.dropout(name="input_dropout", placement="input")(x, train=train)
        if self.stem == "imagenet":
            x = kit.conv(
                STAGE_WIDTHS[0], (7, 7), strides=2, padding=3, role="first", name="stem_conv"
            )(x)
        else:
            x = kit.conv(STAGE_WIDTHS[0], (3, 3), padding=1, role="first", name="stem_conv")(x)
        x = kit.activation(name="stem_act")(kit.norm(name="stem_norm")(x, train=train))
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        stage_sizes = STAGE_SIZES[self.depth]
        num_blocks, index = sum(stage_sizes), 0
        for stage, (width, size) in enumerate(zip(STAGE_WIDTHS, stage_sizes), start=1):
            for block in range(1, size + 1):
                index += 1
                x = ResidualBlock(
                    features=width,
                    strides=2 if stage > 1 and block == 1 else 1,
                    bottleneck=uses_bottleneck(self.depth),
                    layers=kit,
                    zero_init_residual=self.zero_init_residual,
                    index=index,
                    num_blocks=num_blocks,
                    name=f"stage{stage}_block{block}",
                )(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        x = kit.dropout(name="head_dropout", placement="head")(x, train=train)
        logits = kit.dense(self.num_classes, use_bias=True, role="last", name="head")(x)
        return logits.astype(jnp.float32)

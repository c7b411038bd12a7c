"""Pre-activation ResNets and wide ResNets for CIFAR-sized inputs.

Pre-activation ResNets: He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks",
ECCV 2016, arXiv:1603.05027. Each block computes norm -> act -> conv -> norm -> act -> conv on its
branch and adds the untouched input (the "full pre-activation" unit, figure 4e); the network is a
3x3 conv with 16 channels, three stages (stride 2 at the first block of stages 2 and 3), a final
norm -> act, global average pooling and a dense classifier. Basic blocks give depth 6n + 2
(widths 16, 32, 64); bottleneck blocks (1x1, 3x3, 1x1 with 4x wider outputs, 64, 128, 256) give
9n + 2 (164, 1001).

Wide ResNets: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016, arXiv:1605.07146.
WRN-d-k is the same network with basic blocks, widths 16k, 32k, 64k and n = (d - 4) / 6 blocks
per stage (WRN-28-10: n = 4). Its dropout sits between the two convs of each block, after the
activation, as in the authors' code: that is the 'hidden' dropout placement here
(``model.dropout.hidden``; the paper uses 0.3).

Where a block changes shape, the shortcut is a 1x1 conv (stride 2 where the block strides) of
the block's pre-activated input, which then feeds both paths (as in both papers' code).
"""

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnresearch.errors import UsageError
from bnresearch.layers.kit import LayerKit
from bnresearch.models.common import check_positive_int

BLOCKS = ("basic", "bottleneck")
STAGE_WIDTHS = (16, 32, 64)
STEM_WIDTH = 16
BOTTLENECK_EXPANSION = 4


class PreActBlock(nn.Module):
    """A full pre-activation block; `features` is the width of its 3x3 conv(s)."""

    features: int
    strides: int
    block: str
    layers: LayerKit
    zero_init_residual: bool = False
    index: int = 1  # this block's place among all blocks (from 1), for stochastic depth
    num_blocks: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kit = self.layers
        out_features = self.features * (BOTTLENECK_EXPANSION if self.block == "bottleneck" else 1)
        preactivated = kit.activation(name="act1")(kit.norm(name="norm1")(x, train=train))
        if self.strides != 1 or x.shape[-1] != out_features:
            shortcut = kit.conv(
                out_features, (1, 1), strides=self.strides, use_bias=False, name="shortcut_conv"
            )(preactivated)
        else:
            shortcut = x
        if self.block == "basic":
            convs = [((3, 3), self.features, self.strides), ((3, 3), out_features, 1)]
        else:
            convs = [
                ((1, 1), self.features, 1),
                ((3, 3), self.features, self.strides),
                ((1, 1), out_features, 1),
            ]
        y = preactivated
        for i, (kernel, features, strides) in enumerate(convs, start=1):
            if i > 1:
                last = i == len(convs)
                y = kit.norm(name=f"norm{i}", zero_scale=last and self.zero_init_residual)(
                    y, train=train
                )
                y = kit.activation(name=f"act{i}")(y)
                y = kit.dropout(name=f"dropout{i}", placement="hidden")(y, train=train)
            # Every conv feeds a normalization, the last one through the sum: no bias, as in the
            # papers' code, except with norm='none' (the kit's rule).
            y = kit.conv(
                features, kernel, strides=strides, padding=kernel[0] // 2, name=f"conv{i}"
            )(y)
        y = kit.stochastic_depth(name="drop_block", block=self.index, num_blocks=self.num_blocks)(
            y, train=train
        )
        return y + shortcut


def preact_trunk(
    module: nn.Module,
    x: jax.Array,
    train: bool,
    *,
    blocks_per_stage: int,
    widths: tuple[int, ...],
    block: str,
    zero_init_residual: bool,
) -> jax.Array:
    """Stem conv, the three stages, final norm -> act, global pool, classifier (shared by
    PreActResNet and WideResNet, called from their compact __call__)."""
    kit = module.layers.for_forward()
    x = kit.dropout(name="input_dropout", placement="input")(x, train=train)
    x = kit.conv(STEM_WIDTH, (3, 3), padding=1, role="first", name="stem_conv")(x)
    num_blocks = len(widths) * blocks_per_stage
    for stage, width in enumerate(widths, start=1):
        for index in range(1, blocks_per_stage + 1):
            strides = 2 if stage > 1 and index == 1 else 1
            x = PreActBlock(
                features=width,
                strides=strides,
                block=block,
                layers=kit,
                zero_init_residual=zero_init_residual,
                index=(stage - 1) * blocks_per_stage + index,
                num_blocks=num_blocks,
                name=f"stage{stage}_block{index}",
            )(x, train=train)
    x = kit.activation(name="final_act")(kit.norm(name="final_norm")(x, train=train))
    x = jnp.mean(x, axis=(1, 2))
    x = kit.dropout(name="head_dropout", placement="head")(x, train=train)
    logits = kit.dense(module.num_classes, use_bias=True, role="last", name="head")(x)
    return logits.astype(jnp.float32)


class PreActResNet(nn.Module):
    num_classes: int
    layers: LayerKit
    depth: int = 110
    block: str = "basic"
    zero_init_residual: bool = False
    has_residual_blocks: ClassVar[bool] = True

    def __post_init__(self):
        check_positive_int("preact resnet", "num_classes", self.num_classes)
        if self.block not in BLOCKS:
            raise UsageError(
                f"preact resnet: unknown block {self.block!r}; valid: {', '.join(BLOCKS)}"
            )
        per_block = 2 if self.block == "basic" else 3
        if not (
            isinstance(self.depth, int)
            and self.depth > 2
            and (self.depth - 2) % (3 * per_block) == 0
        ):
            raise UsageError(
                f"preact resnet: depth must be {3 * per_block}n + 2 with n >= 1 for "
                f"{self.block} blocks, got {self.depth!r}"
            )
        super().__post_init__()

    @nn.nowrap
    def normalized_features(self) -> tuple[int, ...]:
        """The channel counts the normalization layers see."""
        if self.block == "basic":
            return STAGE_WIDTHS
        return STAGE_WIDTHS + tuple(BOTTLENECK_EXPANSION * w for w in STAGE_WIDTHS)

    @nn.nowrap
    def stages(self) -> tuple[tuple[str, ...], ...]:
        """The model's stages in order, input to logits (see ``models.stages``)."""
        # The last normalization acts on the last stage's output, before the pooling.
        return (("stem_conv",), ("stage1_*",), ("stage2_*",), ("stage3_*", "final_norm"), ("head",))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        per_block = 2 if self.block == "basic" else 3
        return preact_trunk(
            self,
            x,
            train,
            blocks_per_stage=(self.depth - 2) // (3 * per_block),
            widths=STAGE_WIDTHS,
            block=self.block,
            zero_init_residual=self.zero_init_residual,
        )


class WideResNet(nn.Module):
    """WRN-depth-width."""

    num_classes: int
    layers: LayerKit
    depth: int = 28
    width: int = 10
    zero_init_residual: bool = False
    has_residual_blocks: ClassVar[bool] = True

    def __post_init__(self):
        check_positive_int("wrn", "num_classes", self.num_classes)
        check_positive_int("wrn", "width", self.width)
        if not (isinstance(self.depth, int) and self.depth >= 10 and (self.depth - 4) % 6 == 0):
            raise UsageError(f"wrn: depth must be 6n + 4 with n >= 1, got {self.depth!r}")
        super().__post_init__()

    @nn.nowrap
    def normalized_features(self) -> tuple[int, ...]:
        """The channel counts the normalization layers see."""
        return (STEM_WIDTH,) + tuple(self.width * w for w in STAGE_WIDTHS)

    @nn.nowrap
    def stages(self) -> tuple[tuple[str, ...], ...]:
        """The model's stages in order, input to logits (see ``models.stages``)."""
        # The last normalization acts on the last stage's output, before the pooling.
        return (("stem_conv",), ("stage1_*",), ("stage2_*",), ("stage3_*", "final_norm"), ("head",))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return preact_trunk(
            self,
            x,
            train,
            blocks_per_stage=(self.depth - 4) // 6,
            widths=tuple(self.width * w for w in STAGE_WIDTHS),
            block="basic",
            zero_init_residual=self.zero_init_residual,
        )

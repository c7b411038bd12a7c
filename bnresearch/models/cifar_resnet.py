"""The CIFAR ResNets of He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition",
CVPR 2016, arXiv:1512.03385, section 4.2: a 3x3 conv with 16 channels, then three stages of n
basic blocks with 16, 32 and 64 channels (stride 2 at the first block of stages 2 and 3), global
average pooling and a dense classifier; depth = 6n + 2 (20, 32, 44, 56, 110).

The blocks are the paper's post-activation ones: conv-norm-act-conv-norm, add the shortcut, act.
Where a block changes shape the shortcut is either
  'pad': the paper's option A for CIFAR, parameter-free: subsample by taking every second pixel
    (the pixels the stride-2 conv centers on) and zero-pad the new channels; or
  'projection': option B, a strided 1x1 conv followed by the normalization.
Elsewhere it is the identity. Convs have a bias only where the normalization after them adds none
(norm='none'; see LayerKit.bias_before_norm).

Options shared by the residual models: ``zero_init_residual`` starts the last normalization's
gain of every block at 0 (Goyal et al. 2017, arXiv:1706.02677), so each block starts as the
identity; stochastic depth (``model.stochastic_depth``) drops whole residual branches. Hidden
dropout sits after the first activation of each block, between its two convs.
"""

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnresearch.errors import UsageError
from bnresearch.layers.kit import LayerKit
from bnresearch.models.common import check_positive_int

STAGE_WIDTHS = (16, 32, 64)
SHORTCUTS = ("pad", "projection")


class BasicBlock(nn.Module):
    features: int
    strides: int
    shortcut: str
    layers: LayerKit
    zero_init_residual: bool = False
    index: int = 1  # this block's place among all blocks (from 1), for stochastic depth
    num_blocks: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        # padding=1 on both sides, as in the paper's code base, rather than 'SAME', which pads a
        # stride-2 conv on the high side only.
        y = self.layers.conv(self.features, (3, 3), strides=self.strides, padding=1, name="conv1")(
            x
        )
        y = self.layers.norm(name="norm1")(y, train=train)
        y = self.layers.activation(name="act1")(y)
        y = self.layers.dropout(name="dropout", placement="hidden")(y, train=train)
        y = self.layers.conv(self.features, (3, 3), padding=1, name="conv2")(y)
        y = self.layers.norm(name="norm2", zero_scale=self.zero_init_residual)(y, train=train)
        y = self.layers.stochastic_depth(
            name="drop_block", block=self.index, num_blocks=self.num_blocks
        )(y, train=train)
        return self.layers.activation(name="act2")(y + self._shortcut(x, train))

    @nn.nowrap
    def _shortcut(self, x: jax.Array, train: bool) -> jax.Array:
        if self.strides == 1 and x.shape[-1] == self.features:
            return x
        if self.shortcut == "pad":
            x = x[:, :: self.strides, :: self.strides, :]
            return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.features - x.shape[-1])))
        x = self.layers.conv(self.features, (1, 1), strides=self.strides, name="shortcut_conv")(x)
        return self.layers.norm(name="shortcut_norm")(x, train=train)


class CifarResNet(nn.Module):
    num_classes: int
    layers: LayerKit
    depth: int = 20
    shortcut: str = "pad"
    zero_init_residual: bool = False
    has_residual_blocks: ClassVar[bool] = True

    def __post_init__(self):
        check_positive_int("cifar resnet", "num_classes", self.num_classes)
        if not (isinstance(self.depth, int) and self.depth >= 8 and (self.depth - 2) % 6 == 0):
            raise UsageError(f"cifar resnet: depth must be 6n + 2 with n >= 1, got {self.depth!r}")
        if self.shortcut not in SHORTCUTS:
            raise UsageError(
                f"cifar resnet: unknown shortcut {self.shortcut!r}; "
                f"valid shortcuts: {', '.join(SHORTCUTS)}"
            )
        super().__post_init__()

    @nn.nowrap
    def normalized_features(self) -> tuple[int, ...]:
        """The channel counts the normalization layers see."""
        return STAGE_WIDTHS

    @nn.nowrap
    def stages(self) -> tuple[tuple[str, ...], ...]:
        """The model's stages in order, input to logits (see ``models.stages``)."""
        return (("stem_*",), ("stage1_*",), ("stage2_*",), ("stage3_*",), ("head",))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        layers = self.layers.for_forward()
        x = layers.dropout(name="input_dropout", placement="input")(x, train=train)
        x = layers.conv(STAGE_WIDTHS[0], (3, 3), padding=1, role="first", name="stem_conv")(x)
        x = layers.norm(name="stem_norm")(x, train=train)
        x = layers.activation(name="stem_act")(x)
        blocks_per_stage = (self.depth - 2) // 6
        num_blocks = 3 * blocks_per_stage
        for stage, width in enumerate(STAGE_WIDTHS, start=1):
            for block in range(1, blocks_per_stage + 1):
                strides = 2 if stage > 1 and block == 1 else 1
                x = BasicBlock(
                    features=width,
                    strides=strides,
                    shortcut=self.shortcut,
                    layers=layers,
                    zero_init_residual=self.zero_init_residual,
                    index=(stage - 1) * blocks_per_stage + block,
                    num_blocks=num_blocks,
                    name=f"stage{stage}_block{block}",
                )(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        x = layers.dropout(name="head_dropout", placement="head")(x, train=train)
        logits = layers.dense(self.num_classes, use_bias=True, role="last", name="head")(x)
        return logits.astype(jnp.float32)

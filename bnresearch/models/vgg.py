"""VGG-11/13/16/19 for CIFAR-sized inputs, with normalization.

The conv stacks of Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015, arXiv:1409.1556 (configurations A, B, D, E: 3x3 convs with 64, 128, 256,
512, 512 channels, a 2x2 max pool after each of the five groups), each conv followed by the
normalization and the activation. The classifier is the one of Zagoruyko's CIFAR VGG ("92.45% on
CIFAR-10 in Torch", 2015), the common CIFAR choice: after the five pools a 32x32 image is 1x1x512;
flatten, dense 512 -> norm -> act, dense to the classes, with the head dropout before each of the
two dense layers (Zagoruyko uses 0.5). ``classifier_width=0`` gives the single dense layer of
other CIFAR VGGs (e.g. kuangliu/pytorch-cifar). VGG-16 has about 15.0M parameters this way
(14.7M in the convs).

Hidden dropout follows every conv's activation except right before a pool (Zagoruyko's places;
he uses 0.3 after the first conv and 0.4 elsewhere, one rate here).

Pools pad to 'SAME', which on even sides is the plain 2x2 pool and lets inputs smaller than 32
run: an 8x8 digit is 1x1 from the fourth group on.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnresearch.errors import UsageError
from bnresearch.layers.kit import LayerKit
from bnresearch.models.common import check_positive_int

POOL = "pool"
# Simonyan & Zisserman's configurations A, B, D and E: five stages of 3x3 convs of these widths,
# each stage ending in a 2x2 max pool; the depths differ only in the convs per stage.
STAGE_WIDTHS = (64, 128, 256, 512, 512)
CONVS_PER_STAGE = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
CONFIGURATIONS = {
    depth: tuple(
        layer for width, convs in zip(STAGE_WIDTHS, per_stage) for layer in (*[width] * convs, POOL)
    )
    for depth, per_stage in CONVS_PER_STAGE.items()
}


class VGG(nn.Module):
    num_classes: int
    layers: LayerKit
    depth: int = 16
    classifier_width: int = 512

    def __post_init__(self):
        check_positive_int("vgg", "num_classes", self.num_classes)
        if self.depth not in CONFIGURATIONS:
            raise UsageError(
                f"vgg: depth must be one of "
                f"{', '.join(map(str, CONFIGURATIONS))}, got {self.depth!r}"
            )
        if not (isinstance(self.classifier_width, int) and self.classifier_width >= 0):
            raise UsageError(
                f"vgg: classifier_width must be an int >= 0 (0: a single dense "
                f"layer), got {self.classifier_width!r}"
            )
        super().__post_init__()

    @nn.nowrap
    def normalized_features(self) -> tuple[int, ...]:
        """The channel counts the normalization layers see."""
        widths = {w for w in CONFIGURATIONS[self.depth] if w != POOL}
        if self.classifier_width:
            widths.add(self.classifier_width)
        return tuple(sorted(widths))

    @nn.nowrap
    def stages(self) -> tuple[tuple[str, ...], ...]:
        """The model's stages in order, input to logits (see ``models.stages``)."""
        convs = sum(1 for item in CONFIGURATIONS[self.depth] if item != POOL)
        layers = tuple((f"conv{conv}", f"norm{conv}") for conv in range(1, convs + 1))
        classifier = (("classifier", "classifier_norm"),) if self.classifier_width else ()
        return (*layers, *classifier, ("head",))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kit = self.layers.for_forward()
        x = kit.dropout(name="input_dropout", placement="input")(x, train=train)
        configuration = CONFIGURATIONS[self.depth]
        conv = 0
        for position, item in enumerate(configuration):
            if item == POOL:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
                continue
            conv += 1
            x = kit.conv(
                item, (3, 3), padding=1, role="first" if conv == 1 else "hidden", name=f"conv{conv}"
            )(x)
            x = kit.activation(name=f"act{conv}")(kit.norm(name=f"norm{conv}")(x, train=train))
            if configuration[position + 1] != POOL:
                x = kit.dropout(name=f"dropout{conv}", placement="hidden")(x, train=train)
        x = x.reshape(x.shape[0], -1)
        if self.classifier_width:
            x = kit.dropout(name="classifier_dropout", placement="head")(x, train=train)
            x = kit.dense(self.classifier_width, name="classifier")(x)
            x = kit.activation(name="classifier_act")(
                kit.norm(name="classifier_norm")(x, train=train)
            )
        x = kit.dropout(name="head_dropout", placement="head")(x, train=train)
        logits = kit.dense(self.num_classes, use_bias=True, role="last", name="head")(x)
        return logits.astype(jnp.float32)

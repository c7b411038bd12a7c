"""The binarized MLP and VGG-like ConvNet of Hubara, Courbariaux, Soudry, El-Yaniv & Bengio,
"Binarized Neural Networks", NeurIPS 2016, arXiv:1602.02830 (section 2.6 and the code released
with it).

These are the architectures; what binarizes them is ``model.quantization.method=bnn`` with
``model.activation=hard_tanh`` (``configs/bnn_digits.py``), so the same network also runs in full
precision or with any other quantizer, for comparison. The block order is the paper's: weight
layer -> (max pool) -> norm -> activation, the pool before the normalization so that it pools
the integer pre-activations rather than signs; the next quantized layer binarizes the activation
(``bnresearch/layers/quantization.py``), so the first layer sees real-valued pixels.

- ``bnn_mlp``: 3 hidden layers of 4096 units (the paper's MNIST MLP).
- ``bnn_vgg``: (2 x 128C3) - MP2 - (2 x 256C3) - MP2 - (2 x 512C3) - MP2 - (2 x 1024FC) - 10, the
  paper's CIFAR-10/SVHN network; ``widths`` are the three conv stages, ``hidden_sizes`` the dense
  layers.

The logits layer is followed by a normalization of the logits, as in the released code (a batch
norm after the last binary layer, with the learnable gain and shift of Lasagne's BatchNormLayer,
which the kit's normalizations have too); the paper trains with a squared hinge loss, this code
base with cross-entropy. The first and logits layers stay full precision unless
``model.quantization.quantize_first`` / ``quantize_last``; ``configs/bnn_digits.py`` sets both,
as the paper binarizes the weights of every layer. Hidden dropout follows each hidden
activation, head dropout comes right before the logits layer.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnresearch.layers.kit import LayerKit
from bnresearch.models.common import check_positive_int, check_positive_ints


def _classifier(
    module: nn.Module, kit: LayerKit, x: jax.Array, train: bool, first: bool
) -> jax.Array:
    """The dense layers (weight -> norm -> act each) and the normalized logits layer, built from
    `kit`, the kit of the forward pass."""
    for layer, width in enumerate(module.hidden_sizes, start=1):
        role = "first" if first and layer == 1 else "hidden"
        x = kit.dense(width, role=role, name=f"dense{layer}")(x)
        x = kit.activation(name=f"dense{layer}_act")(
            kit.norm(name=f"dense{layer}_norm")(x, train=train)
        )
        x = kit.dropout(name=f"dense{layer}_dropout", placement="hidden")(x, train=train)
    x = kit.dropout(name="head_dropout", placement="head")(x, train=train)
    logits = kit.dense(module.num_classes, role="last", name="head")(x)
    return kit.norm(name="head_norm")(logits, train=train).astype(jnp.float32)


class BinarizedMLP(nn.Module):
    num_classes: int
    layers: LayerKit
    hidden_sizes: Sequence[int] = (4096, 4096, 4096)

    def __post_init__(self):
        check_positive_int("bnn mlp", "num_classes", self.num_classes)
        check_positive_ints("bnn mlp", "hidden_sizes", self.hidden_sizes)
        super().__post_init__()

    @nn.nowrap
    def normalized_features(self) -> tuple[int, ...]:
        """The channel counts the normalization layers see (the logits included)."""
        return (*self.hidden_sizes, self.num_classes)

    @nn.nowrap
    def stages(self) -> tuple[tuple[str, ...], ...]:
        """The model's stages in order, input to logits (see ``models.stages``)."""
        hidden = tuple(
            (f"dense{layer}", f"dense{layer}_norm")
            for layer in range(1, len(self.hidden_sizes) + 1)
        )
        return (*hidden, ("head", "head_norm"))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kit = self.layers.for_forward()
        x = kit.dropout(name="input_dropout", placement="input")(x, train=train)
        return _classifier(self, kit, x.reshape(x.shape[0], -1), train, first=True)


class BinarizedVGG(nn.Module):
    num_classes: int
    layers: LayerKit
    widths: Sequence[int] = (128, 256, 512)
    hidden_sizes: Sequence[int] = (1024, 1024)

    def __post_init__(self):
        check_positive_int("bnn vgg", "num_classes", self.num_classes)
        check_positive_ints("bnn vgg", "widths", self.widths)
        check_positive_ints("bnn vgg", "hidden_sizes", self.hidden_sizes)
        super().__post_init__()

    @nn.nowrap
    def normalized_features(self) -> tuple[int, ...]:
        """The channel counts the normalization layers see (the logits included)."""
        return (*self.widths, *self.hidden_sizes, self.num_classes)

    @nn.nowrap
    def stages(self) -> tuple[tuple[str, ...], ...]:
        """The model's stages in order, input to logits (see ``models.stages``)."""
        convs = tuple((f"stage{stage}_*",) for stage in range(1, len(self.widths) + 1))
        hidden = tuple(
            (f"dense{layer}", f"dense{layer}_norm")
            for layer in range(1, len(self.hidden_sizes) + 1)
        )
        return (*convs, *hidden, ("head", "head_norm"))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kit = self.layers.for_forward()
        x = kit.dropout(name="input_dropout", placement="input")(x, train=train)
        for stage, width in enumerate(self.widths, start=1):
            for conv in (1, 2):
                layer = f"stage{stage}_conv{conv}"
                role = "first" if stage == conv == 1 else "hidden"
                x = kit.conv(width, (3, 3), padding=1, role=role, name=layer)(x)
                if conv == 2:  # 'SAME': an 8x8 digit goes 4, 2, 1
                    x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
                x = kit.activation(name=f"{layer}_act")(
                    kit.norm(name=f"{layer}_norm")(x, train=train)
                )
                x = kit.dropout(name=f"{layer}_dropout", placement="hidden")(x, train=train)
        return _classifier(self, kit, x.reshape(x.shape[0], -1), train, first=False)

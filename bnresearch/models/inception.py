"""An Inception-style network with factorized convolutions, sized for small images.

The design principles of Szegedy, Vanhoucke, Ioffe, Shlens & Wojna, "Rethinking the Inception
Architecture for Computer Vision", CVPR 2016, arXiv:1512.00567, section 3, in a network for
CIFAR-sized inputs (Inception-v3 itself expects 299 x 299):

- module A (figure 5): branches 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 (a 5x5 factorized into two
  3x3 convs: the same receptive field for 18/25 of the weights) | 3x3 average pool -> 1x1;
- a grid reduction (figure 10): 3x3 stride 2 | 1x1 -> 3x3 -> 3x3 stride 2 | 3x3 stride-2 max
  pool, concatenated, which halves the grid without a representational bottleneck;
- module B (figure 6): n x n convs factorized into 1xn followed by nx1 (2n instead of n^2
  weights): 1x1 | 1x1 -> 1xn -> nx1 | 1x1 -> nx1 -> 1xn -> nx1 -> 1xn | avg pool -> 1x1.

The network: a 3x3 conv stem, two A modules, the reduction, two B modules, global average
pooling and a dense classifier. With ``base_width`` w the A modules output 8w channels and the
reduction and B modules 16w (w = 32: 256 and 512). ``factorized_kernel`` is n (7 in the paper,
at a 17 x 17 grid; a 32 x 32 input meets the B modules at 16 x 16). Every conv is conv -> norm ->
act; hidden dropout follows each module's output.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnresearch.errors import UsageError
from bnresearch.layers.kit import LayerKit
from bnresearch.models.common import check_positive_int


class ConvUnit(nn.Module):
    """conv -> norm -> act, padded to keep the grid (or halve it at stride 2)."""

    features: int
    kernel: tuple[int, int]
    layers: LayerKit
    strides: int = 1
    role: str = "hidden"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        padding = [(k // 2, k // 2) for k in self.kernel]
        x = self.layers.conv(
            self.features,
            self.kernel,
            strides=self.strides,
            padding=padding,
            role=self.role,
            name="conv",
        )(x)
        return self.layers.activation(name="act")(self.layers.norm(name="norm")(x, train=train))


def _branch(module: nn.Module, x: jax.Array, train: bool, name: str, units) -> jax.Array:
    """A chain of ConvUnits given as (features, kernel[, strides])."""
    for i, (features, kernel, *strides) in enumerate(units, start=1):
        x = ConvUnit(
            features,
            kernel,
            module.layers,
            strides=strides[0] if strides else 1,
            name=f"{name}_{i}",
        )(x, train=train)
    return x


def _average_pool(x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


class ModuleA(nn.Module):
    """Figure 5: the 5x5 branch as two 3x3 convs. Output 8w channels."""

    width: int
    layers: LayerKit

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        w = self.width
        return jnp.concatenate(
            [
                _branch(self, x, train, "b1x1", [(2 * w, (1, 1))]),
                _branch(self, x, train, "b3x3", [(w, (1, 1)), (2 * w, (3, 3))]),
                _branch(self, x, train, "b5x5", [(w, (1, 1)), (2 * w, (3, 3)), (2 * w, (3, 3))]),
                _branch(self, _average_pool(x), train, "pool", [(2 * w, (1, 1))]),
            ],
            axis=-1,
        )


class Reduction(nn.Module):
    """Figure 10: strided convs beside a strided pool. Output 8w + the input's channels."""

    width: int
    layers: LayerKit

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        w = self.width
        pooled = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return jnp.concatenate(
            [
                _branch(self, x, train, "b3x3", [(4 * w, (3, 3), 2)]),
                _branch(
                    self, x, train, "b5x5", [(2 * w, (1, 1)), (4 * w, (3, 3)), (4 * w, (3, 3), 2)]
                ),
                pooled,
            ],
            axis=-1,
        )


class ModuleB(nn.Module):
    """Figure 6: n x n convs as 1xn then nx1. Output 16w channels."""

    width: int
    n: int
    layers: LayerKit

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        w, row, column = self.width, (1, self.n), (self.n, 1)
        return jnp.concatenate(
            [
                _branch(self, x, train, "b1x1", [(4 * w, (1, 1))]),
                _branch(self, x, train, "bnxn", [(2 * w, (1, 1)), (2 * w, row), (4 * w, column)]),
                _branch(
                    self,
                    x,
                    train,
                    "bnxn_double",
                    [(2 * w, (1, 1)), (2 * w, column), (2 * w, row), (2 * w, column), (4 * w, row)],
                ),
                _branch(self, _average_pool(x), train, "pool", [(4 * w, (1, 1))]),
            ],
            axis=-1,
        )


class InceptionNet(nn.Module):
    num_classes: int
    layers: LayerKit
    base_width: int = 32
    factorized_kernel: int = 7

    def __post_init__(self):
        check_positive_int("inception", "num_classes", self.num_classes)
        check_positive_int("inception", "base_width", self.base_width)
        if not (
            isinstance(self.factorized_kernel, int)
            and self.factorized_kernel >= 3
            and self.factorized_kernel % 2 == 1
        ):
            raise UsageError(
                f"inception: factorized_kernel must be an odd int >= 3, got "
                f"{self.factorized_kernel!r}"
            )
        super().__post_init__()

    @nn.nowrap
    def normalized_features(self) -> tuple[int, ...]:
        """The channel counts the normalization layers see."""
        w = self.base_width
        return (w, 2 * w, 4 * w)

    @nn.nowrap
    def stages(self) -> tuple[tuple[str, ...], ...]:
        """The model's stages in order, input to logits (see ``models.stages``)."""
        return (("stem",), ("a1",), ("a2",), ("reduction",), ("b1",), ("b2",), ("head",))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kit, w = self.layers.for_forward(), self.base_width
        x = kit.dropout(name="input_dropout", placement="input")(x, train=train)
        x = ConvUnit(2 * w, (3, 3), kit, role="first", name="stem")(x, train=train)
        blocks = [
            ModuleA(w, kit, name="a1"),
            ModuleA(w, kit, name="a2"),
            Reduction(w, kit, name="reduction"),
            ModuleB(w, self.factorized_kernel, kit, name="b1"),
            ModuleB(w, self.factorized_kernel, kit, name="b2"),
        ]
        for block in blocks:
            x = block(x, train=train)
            x = kit.dropout(name=f"{block.name}_dropout", placement="hidden")(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        x = kit.dropout(name="head_dropout", placement="head")(x, train=train)
        logits = kit.dense(self.num_classes, use_bias=True, role="last", name="head")(x)
        return logits.astype(jnp.float32)

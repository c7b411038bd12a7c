"""The layers a model is built from, bundled: weight layers (conv, dense), normalization,
activation and compute dtype.

Models never construct ``nn.Conv``, ``nn.Dense`` or a normalization themselves: they call the
factories of the ``LayerKit`` they are given. That is what lets a config swap, in every model at
once, the normalization and activation (by name) and the weight layers themselves (weight
normalization reparametrizes them; quantized networks binarize them).

Models call ``kit.conv(features, kernel_size, strides=..., padding=..., use_bias=..., role=...,
name=...)`` or ``kit.dense(features, use_bias=..., role=..., name=...)`` and apply the module it
returns to the input. ``role`` says where the layer sits: ``'first'`` (it sees the input images),
``'last'`` (it produces the logits) or ``'hidden'``. Quantized networks keep the first and last
layers in full precision by convention, and the plain last layer keeps LeCun-normal init
(variance 1/fan_in), the usual choice for logits.

Initialization is a setting of the kit (``weight_init``, see ``kernel_initializer``): He-normal by
default, LeCun-normal everywhere for self-normalizing (SELU) networks, Glorot-uniform as in the
binarized-network papers. The kit hands it, with the compute dtype, to its weight-layer
factories, which are called as ``conv_factory(features, kernel_size, strides=..., padding=...,
use_bias=..., role=..., dtype=..., weight_init=..., name=...)`` and ``dense_factory(features,
use_bias=..., role=..., dtype=..., weight_init=..., name=...)``.

A model's forward pass builds its layers from ``kit.for_forward()``, called once at the top of
its ``__call__`` and handed to its blocks: that is the kit of that one pass, which a
normalization may give state its layers share during the pass (batch Kalman norm's record of the
layers so far, ``bnresearch/layers/normalization/kalman.py``). For every other normalization it
is the kit itself.

The kit also holds the train-time regularizers a model places: dropout at the model's
``'input'``, ``'hidden'`` and ``'head'`` placements (alpha-dropout in self-normalizing networks)
and stochastic depth on residual branches (``bnresearch/layers/regularization.py``).
"""

import dataclasses
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
from flax.typing import Dtype

from bnresearch.errors import UsageError
from bnresearch.layers.convolution import conv_general_dilated
from bnresearch.layers.registry import ModuleFactory, has_field
from bnresearch.layers.regularization import AlphaDropout, Dropout, StochasticDepth, linear_survival

ROLES = ("first", "hidden", "last")

# He et al. 2015 ("Delving Deep into Rectifiers", arXiv:1502.01852) normal init, fan_in mode.
# fan_in keeps the variance of the forward activations constant through ReLU layers, which is
# what matters when a model runs with norm='none' (with a normalization after each layer the
# weight scale is divided out anyway). JAX draws from a truncated normal rescaled to 2 / fan_in.
HE_NORMAL = nn.initializers.he_normal()
LECUN_NORMAL = nn.initializers.lecun_normal()

# By name, for the config's model.weight_init. LeCun-normal (variance 1/fan_in) is what SELU's
# fixed point assumes (Klambauer et al. 2017, arXiv:1706.02515); Glorot-uniform (Glorot & Bengio
# 2010) is the init of the BinaryConnect and BNN papers.
WEIGHT_INITS = {
    "he_normal": HE_NORMAL,
    "lecun_normal": LECUN_NORMAL,
    "glorot_uniform": nn.initializers.glorot_uniform(),
}

WeightLayerFactory = Callable[..., nn.Module]


def check_weight_init(weight_init: str | None) -> None:
    if weight_init is not None and weight_init not in WEIGHT_INITS:
        raise UsageError(
            f"unknown model.weight_init {weight_init!r}; valid: {', '.join(WEIGHT_INITS)}"
        )


def kernel_initializer(weight_init: str | None, role: str, layer: str):
    """The kernel init of a weight layer: `weight_init` by name for every layer, or, for None,
    He-normal except LeCun-normal for a dense logits layer (`layer` is 'conv' or 'dense')."""
    if weight_init is None:
        return LECUN_NORMAL if role == "last" and layer == "dense" else HE_NORMAL
    return WEIGHT_INITS[weight_init]


def plain_conv(
    features: int,
    kernel_size: Sequence[int],
    *,
    strides: int = 1,
    padding="SAME",
    use_bias: bool = True,
    role: str = "hidden",
    dtype: Dtype = jnp.float32,
    name: str | None = None,
    weight_init: str | None = None,
    layer: type[nn.Conv] = nn.Conv,
    **layer_fields,
) -> nn.Module:
    """``nn.Conv`` initialized by ``kernel_initializer``, computing with the kit's convolution
    (``bnresearch/layers/convolution.py``); float32 parameters, computing in ``dtype``.
    ``layer`` (a subclass of ``nn.Conv``) and ``layer_fields`` (its own fields) let a
    normalization build its variant of the conv the same way (batch Kalman norm's)."""
    return layer(
        features,
        tuple(kernel_size),
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        kernel_init=kernel_initializer(weight_init, role, "conv"),
        dtype=dtype,
        conv_general_dilated=conv_general_dilated,
        name=name,
        **layer_fields,
    )


def plain_dense(
    features: int,
    *,
    use_bias: bool = True,
    role: str = "hidden",
    dtype: Dtype = jnp.float32,
    name: str | None = None,
    weight_init: str | None = None,
    layer: type[nn.Dense] = nn.Dense,
    **layer_fields,
) -> nn.Module:
    """``nn.Dense`` initialized by ``kernel_initializer``; ``layer`` and ``layer_fields`` as
    in ``plain_conv``."""
    return layer(
        features,
        use_bias=use_bias,
        kernel_init=kernel_initializer(weight_init, role, "dense"),
        dtype=dtype,
        name=name,
        **layer_fields,
    )


@dataclasses.dataclass(frozen=True)
class LayerKit:
    """Factories for every layer a model builds, with the settings they are built with.

    ``norm_factory`` and ``activation_factory`` come from the registries, ``conv_factory`` and
    ``dense_factory`` are weight-layer factories as described in the module docstring (the plain
    full-precision ones by default), ``weight_init`` names their kernels' initialization (None:
    see ``kernel_initializer``). Models call the methods, which pass the dtype, the
    initialization and the bias rule on. Parameters are float32 whatever ``dtype`` is.

    ``input_dropout``, ``hidden_dropout`` and ``head_dropout`` are the drop rates at a model's
    three dropout placements (``'input'`` is on the images, before the first layer; each model
    documents where its ``'hidden'`` ones are; ``'head'`` is right before the classifier);
    ``alpha_dropout`` swaps dropout for alpha-dropout.
    ``stochastic_depth_rate`` is 1 - p_L, the drop probability of the last residual block
    (0: off).
    """

    norm_factory: ModuleFactory
    activation_factory: ModuleFactory
    conv_factory: WeightLayerFactory = plain_conv
    dense_factory: WeightLayerFactory = plain_dense
    weight_init: str | None = None
    dtype: Dtype = jnp.float32
    input_dropout: float = 0.0
    hidden_dropout: float = 0.0
    head_dropout: float = 0.0
    alpha_dropout: bool = False
    stochastic_depth_rate: float = 0.0

    def __post_init__(self):
        check_weight_init(self.weight_init)

    def for_forward(self) -> "LayerKit":
        """The kit one forward pass of a model builds its layers from (see the module
        docstring): the normalization's ``open_forward`` of this kit."""
        return self.norm_factory(parent=None).open_forward(self)

    @property
    def has_plain_weight_layers(self) -> bool:
        """Whether the weight layers are still the full-precision ``plain_conv`` and
        ``plain_dense`` (not quantized, weight-normalized, ...)."""
        return self.conv_factory is plain_conv and self.dense_factory is plain_dense

    def conv(
        self,
        features: int,
        kernel_size: Sequence[int],
        *,
        name: str,
        strides: int = 1,
        padding="SAME",
        use_bias: bool | None = None,
        role: str = "hidden",
    ) -> nn.Module:
        """A conv from the kit's factory. ``use_bias=None``: a bias exactly when the
        normalization that follows adds none (see ``bias_before_norm``)."""
        if use_bias is None:
            use_bias = self.bias_before_norm
        return self.conv_factory(
            features,
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=use_bias,
            role=role,
            dtype=self.dtype,
            weight_init=self.weight_init,
            name=name,
        )

    def dense(
        self, features: int, *, name: str, use_bias: bool | None = None, role: str = "hidden"
    ) -> nn.Module:
        """A dense layer from the kit's factory; ``use_bias`` as in ``conv``."""
        if use_bias is None:
            use_bias = self.bias_before_norm
        return self.dense_factory(
            features,
            use_bias=use_bias,
            role=role,
            dtype=self.dtype,
            weight_init=self.weight_init,
            name=name,
        )

    def norm(self, *, name: str, zero_scale: bool = False) -> nn.Module:
        """A normalization, applied as ``norm(x, train=...)``.

        ``zero_scale``: start its gain at 0, as for the last normalization of a residual branch
        (Goyal et al. 2017, arXiv:1706.02677), so each block starts as the identity. Ignored by
        normalizations without a gain.
        """
        if zero_scale and has_field(self.norm_factory, "scale_init"):
            return self.norm_factory(dtype=self.dtype, scale_init=0.0, name=name)
        return self.norm_factory(dtype=self.dtype, name=name)

    def activation(self, *, name: str) -> nn.Module:
        return self.activation_factory(name=name)

    def dropout(self, *, name: str, placement: str) -> nn.Module:
        """Dropout at `placement` ('input', 'hidden' or 'head'), applied as
        ``dropout(x, train=...)``; the identity where the config sets no rate for it."""
        rate = {
            "input": self.input_dropout,
            "hidden": self.hidden_dropout,
            "head": self.head_dropout,
        }[placement]
        return (AlphaDropout if self.alpha_dropout else Dropout)(rate=rate, name=name)

    def stochastic_depth(self, *, name: str, block: int, num_blocks: int) -> nn.Module:
        """Stochastic depth for residual block `block` (from 1) of `num_blocks`, applied to the
        branch as ``drop(branch, train=...)``, with the linear survival rule."""
        survival = linear_survival(block, num_blocks, self.stochastic_depth_rate)
        return StochasticDepth(survival=survival, name=name)

    @property
    def bias_before_norm(self) -> bool:
        """Whether a weight layer followed by the kit's normalization needs its own bias.

        A normalization that ends with a learned shift makes a bias before it redundant (the
        mean subtraction removes it). Without one, a model run with norm='none' would have no
        shift at all, a confound when it is the baseline a normalization is compared against.
        """
        return not self.norm_factory(parent=None).adds_bias

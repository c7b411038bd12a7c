"""Quantized networks: quantizers with their straight-through estimators (STEs), and quantized
conv and dense layers that plug into the ``LayerKit``.

The STEs are ``jax.custom_vjp`` functions (``sign_ste``, ``sign_clipped_ste``,
``stochastic_sign_ste``, ``round_ste``, ``stochastic_round_ste``, ``xnor_binarize``,
``quantize_gradient``); each quantizer composes one with ordinary differentiable operations
(clip, tanh, scaling), whose exact gradients autodiff supplies. Every quantizer's docstring says
the gradient it gives; the tests check each against that claim.

Quantized layers keep real-valued latent weights (float32 parameters) and quantize them in every
forward pass; the gradient reaches the latent weights through the STE. Methods that clip the
latent weights to [-1, 1] after each update (BinaryConnect, BNN, XNOR, QNN, whose weight STEs
pass gradient only inside [-1, 1]) name the parameter ``latent_kernel``:
``bnresearch/optim/constraints.py`` clips exactly the leaves of that name.

Activation quantization is the INPUT quantizer of each quantized layer: the activation of the
previous layer is quantized where the next weight layer consumes it, as in the papers' hardware
view (binary or k-bit operands of every multiply). So the first layer, which sees the images,
never quantizes its input, the shortcut of a residual block stays full precision, and with the
convention that first and last layers stay full precision (``quantize_first``,
``quantize_last``), the logits layer sees full-precision inputs. Binary inputs want a
zero-centred activation before them (hard_tanh as in BNN, or a normalization): sign(relu(x)) is
always +1. DoReFa's activation quantizer clips to [0, 1] itself.

Stochastic quantizers draw from the train-time stream ``RNG_STREAM``, which the train step
supplies and evaluation does not: a layer quantizes stochastically exactly when that stream is
present (training, and the training-mode init) and uses the deterministic version otherwise
(evaluation: sign for BinaryConnect, round-to-nearest for QNN; no gradient is quantized since
there is none). Given the key, every stochastic quantizer is deterministic.

References:
  binaryconnect: Courbariaux, Bengio & David, "BinaryConnect: Training Deep Neural Networks with
    binary weights during propagations", NeurIPS 2015, arXiv:1511.00363.
  bnn: Hubara, Courbariaux, Soudry, El-Yaniv & Bengio, "Binarized Neural Networks", NeurIPS 2016,
    arXiv:1602.02830.
  xnor: Rastegari, Ordonez, Redmon & Farhadi, "XNOR-Net: ImageNet Classification Using Binary
    Convolutional Neural Networks", ECCV 2016, arXiv:1603.05279.
  qnn: Hubara, Courbariaux, Soudry, El-Yaniv & Bengio, "Quantized Neural Networks: Training
    Neural Networks with Low Precision Weights and Activations", JMLR 2018, arXiv:1609.07061.
  dorefa: Zhou, Wu, Ni, Zhou, Wen & Zou, "DoReFa-Net: Training Low Bitwidth Convolutional Neural
    Networks with Low Bitwidth Gradients", 2016, arXiv:1606.06160.
"""

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.linear import PaddingLike, canonicalize_padding
from flax.typing import Dtype, Initializer

from bnresearch.errors import UsageError
from bnresearch.layers.convolution import conv_general_dilated
from bnresearch.layers.kit import WeightLayerFactory, kernel_initializer, plain_conv, plain_dense
from bnresearch.layers.variables import LATENT_KERNEL, RNG_STREAM

FULL_PRECISION = 32  # bits: this operand is not quantized


# --- the straight-through estimators ------------------------------------------------------------


def _sign(x: jax.Array) -> jax.Array:
    """+1 for x >= 0, -1 otherwise (sign(0) = +1, as in the BNN paper)."""
    return jnp.where(x >= 0, 1, -1).astype(x.dtype)


@jax.custom_vjp
def sign_ste(x: jax.Array) -> jax.Array:
    """sign(x); gradient passed straight through (identity): BinaryConnect's estimator."""
    return _sign(x)


sign_ste.defvjp(lambda x: (_sign(x), None), lambda _, g: (g,))


@jax.custom_vjp
def sign_clipped_ste(x: jax.Array) -> jax.Array:
    """sign(x); gradient g * 1{|x| <= 1}: the clipped STE of BNN (and XNOR-Net's window)."""
    return _sign(x)


sign_clipped_ste.defvjp(
    lambda x: (_sign(x), x), lambda x, g: (g * (jnp.abs(x) <= 1).astype(g.dtype),)
)


def _stochastic_sign(x: jax.Array, key: jax.Array) -> jax.Array:
    """+1 with probability hard_sigmoid(x) = clip((x + 1) / 2, 0, 1), else -1."""
    probability_of_one = jnp.clip((x + 1) / 2, 0, 1)
    return jnp.where(jax.random.uniform(key, x.shape) < probability_of_one, 1, -1).astype(x.dtype)


@jax.custom_vjp
def stochastic_sign_ste(x: jax.Array, key: jax.Array) -> jax.Array:
    """BinaryConnect's stochastic binarization; identity gradient. E[output] = clip(x, -1, 1)."""
    return _stochastic_sign(x, key)


stochastic_sign_ste.defvjp(lambda x, key: (_stochastic_sign(x, key), None), lambda _, g: (g, None))


@jax.custom_vjp
def round_ste(x: jax.Array) -> jax.Array:
    """Round to the nearest integer (ties to even); identity gradient."""
    return jnp.round(x)


round_ste.defvjp(lambda x: (jnp.round(x), None), lambda _, g: (g,))


def _stochastic_round(x: jax.Array, key: jax.Array) -> jax.Array:
    """floor(x + u), u ~ U[0, 1): rounds up with probability frac(x), so E[output] = x."""
    return jnp.floor(x + jax.random.uniform(key, x.shape, x.dtype))


@jax.custom_vjp
def stochastic_round_ste(x: jax.Array, key: jax.Array) -> jax.Array:
    """Unbiased stochastic rounding to an integer; identity gradient."""
    return _stochastic_round(x, key)


stochastic_round_ste.defvjp(
    lambda x, key: (_stochastic_round(x, key), None), lambda _, g: (g, None)
)


def _filter_axes(w: jax.Array) -> tuple[int, ...]:
    """The axes of one output filter: every axis but the last (HWIO convs, (in, out) dense)."""
    return tuple(range(w.ndim - 1))


def _xnor_binarize(w: jax.Array) -> jax.Array:
    alpha = jnp.mean(jnp.abs(w), axis=_filter_axes(w), keepdims=True)
    return alpha * _sign(w)


@jax.custom_vjp
def xnor_binarize(w: jax.Array) -> jax.Array:
    """XNOR-Net's binary weights alpha sign(W), alpha = ||W||_1 / n per output filter (n weights
    per filter). Gradient as in the paper (section 3.1): g (1/n + alpha 1{|W| <= 1}), i.e. the
    clipped STE for sign plus the diagonal term of alpha's derivative."""
    return _xnor_binarize(w)


def _xnor_binarize_backward(w, g):
    n = w.size // w.shape[-1]
    alpha = jnp.mean(jnp.abs(w), axis=_filter_axes(w), keepdims=True)
    return (g * (1 / n + alpha * (jnp.abs(w) <= 1)),)


xnor_binarize.defvjp(lambda w: (_xnor_binarize(w), w), _xnor_binarize_backward)


def quantize_unit(r: jax.Array, bits: int) -> jax.Array:
    """DoReFa's quantize_k of r in [0, 1]: round((2^k - 1) r) / (2^k - 1); identity gradient."""
    levels = 2**bits - 1
    return round_ste(r * levels) / levels


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def quantize_gradient(x: jax.Array, key: jax.Array, bits: int) -> jax.Array:
    """The identity forward; DoReFa's k-bit gradient quantization with its noise backward:
    dr -> 2M [quantize_k(dr / (2M) + 1/2 + N) - 1/2], M = max |dr| over each example's
    (non-batch) axes, N ~ U(-1/2, 1/2) / (2^k - 1) per element. The noise makes it unbiased:
    E[quantized dr] = dr."""
    del key, bits
    return x


def _quantize_gradient_backward(bits, key, g):
    levels = 2**bits - 1
    per_example = tuple(range(1, g.ndim))
    max_abs = jnp.max(jnp.abs(g), axis=per_example, keepdims=True)
    # no 0/0 for an example whose gradient is all zero; multiplied by max_abs = 0, it stays 0
    safe_max = jnp.where(max_abs > 0, max_abs, 1)
    noise = jax.random.uniform(key, g.shape, g.dtype, -0.5, 0.5) / levels
    quantized = jnp.round((g / (2 * safe_max) + 0.5 + noise) * levels) / levels
    return (2 * max_abs * (quantized - 0.5), None)


quantize_gradient.defvjp(lambda x, key, bits: (x, key), _quantize_gradient_backward)


# --- quantizers, composed from the estimators above ---------------------------------------------


def linear_quantize(
    x: jax.Array, bits: int, low: float, high: float, key: jax.Array | None = None
) -> jax.Array:
    """QNN's k-bit linear quantizer on [low, high]: 2^k evenly spaced levels including both ends,
    q = low + Delta round((clip(x, low, high) - low) / Delta), Delta = (high - low) / (2^k - 1);
    with `key`, unbiased stochastic rounding instead. Gradient g 1{low < x < high}: identity
    through the rounding, clip's own derivative outside."""
    step = (high - low) / (2**bits - 1)
    scaled = (jnp.clip(x, low, high) - low) / step
    rounded = round_ste(scaled) if key is None else stochastic_round_ste(scaled, key)
    return low + step * rounded


def dorefa_weights(w: jax.Array, bits: int) -> jax.Array:
    """DoReFa's k-bit weights. k = 1: E sign(w / E), E = stop_gradient(mean |w|) over the layer,
    identity gradient through sign. k > 1: 2 quantize_k(tanh(w) / (2 max |tanh w|) + 1/2) - 1,
    gradient through tanh and the max by autodiff, identity through the rounding."""
    if bits == 1:
        scale = jax.lax.stop_gradient(jnp.mean(jnp.abs(w)))
        return scale * sign_ste(w / scale)
    squashed = jnp.tanh(w)
    return 2 * quantize_unit(squashed / (2 * jnp.max(jnp.abs(squashed))) + 0.5, bits) - 1


def dorefa_activations(x: jax.Array, bits: int) -> jax.Array:
    """DoReFa's k-bit activations quantize_k(clip(x, 0, 1)); gradient g 1{0 < x < 1}."""
    return quantize_unit(jnp.clip(x, 0, 1), bits)


# --- the configuration --------------------------------------------------------------------------

METHODS = ("none", "binaryconnect", "bnn", "xnor", "qnn", "dorefa")
# Default (weight, activation, gradient) bits of each method; FULL_PRECISION = not quantized.
DEFAULT_BITS = {
    "none": (32, 32, 32),
    "binaryconnect": (1, 32, 32),  # binary weights only
    "bnn": (1, 1, 32),
    "xnor": (1, 1, 32),  # activation_bits=32: XNOR-Net's binary-weight network (BWN)
    "qnn": (2, 2, 32),
    "dorefa": (1, 2, 32),
}
CLIPS_LATENT_WEIGHTS = frozenset({"binaryconnect", "bnn", "xnor", "qnn"})
STOCHASTIC_METHODS = frozenset({"binaryconnect", "qnn"})


@dataclasses.dataclass(frozen=True)
class QuantizationSpec:
    """What a quantized network quantizes and how; build it with ``quantization_spec``."""

    method: str = "none"
    weight_bits: int = FULL_PRECISION
    activation_bits: int = FULL_PRECISION
    gradient_bits: int = FULL_PRECISION
    stochastic: bool = False  # binaryconnect: stochastic binarization; qnn: stochastic rounding
    input_scale: bool = False  # xnor: scale outputs by K, the local mean of |input|
    quantize_first: bool = False  # also quantize the weights of the layer that sees the images
    quantize_last: bool = False  # also quantize the logits layer (weights and inputs)

    def quantizes(self, role: str) -> bool:
        """Whether a weight layer in `role` ('first', 'hidden', 'last') is quantized."""
        if self.method == "none":
            return False
        return {"first": self.quantize_first, "hidden": True, "last": self.quantize_last}[role]

    @property
    def kernel_name(self) -> str:
        return LATENT_KERNEL if self.method in CLIPS_LATENT_WEIGHTS else "kernel"

    def quantize_weights(self, w: jax.Array, key: jax.Array | None) -> jax.Array:
        """The weights the layer multiplies with; `key`: the train-time key, None at eval."""
        bits, method = self.weight_bits, self.method
        stochastic_key = key if self.stochastic else None
        if bits == FULL_PRECISION:
            return w
        if method == "binaryconnect":
            return sign_ste(w) if stochastic_key is None else stochastic_sign_ste(w, stochastic_key)
        if method == "bnn":
            return sign_clipped_ste(w)
        if method == "xnor":
            return xnor_binarize(w)
        if method == "qnn":
            return linear_quantize(w, bits, -1.0, 1.0, stochastic_key)
        return dorefa_weights(w, bits)

    def quantize_inputs(self, x: jax.Array, key: jax.Array | None) -> jax.Array:
        """The quantized activations a layer consumes (its input)."""
        bits, method = self.activation_bits, self.method
        if bits == FULL_PRECISION:
            return x
        if method in ("bnn", "xnor"):
            return sign_clipped_ste(x)
        if method == "qnn":
            return linear_quantize(x, bits, -1.0, 1.0, key if self.stochastic else None)
        return dorefa_activations(x, bits)


def _check_bits(field: str, bits) -> None:
    if not (isinstance(bits, int) and 1 <= bits <= FULL_PRECISION):
        raise UsageError(
            f"model.quantization.{field} must be an int from 1 to {FULL_PRECISION} "
            f"({FULL_PRECISION}: full precision), got {bits!r}"
        )


def quantization_spec(
    method: str = "none",
    *,
    weight_bits: int | None = None,
    activation_bits: int | None = None,
    gradient_bits: int | None = None,
    stochastic: bool = False,
    input_scale: bool = False,
    quantize_first: bool = False,
    quantize_last: bool = False,
) -> QuantizationSpec:
    """The spec of `method` with its default bits (``DEFAULT_BITS``) where None; raises a one-line
    UsageError for an unknown method and for combinations the method does not define."""
    if method not in METHODS:
        raise UsageError(
            f"unknown model.quantization.method {method!r}; valid: {', '.join(METHODS)}"
        )
    defaults = DEFAULT_BITS[method]
    bits = {
        field: default if value is None else value
        for field, value, default in zip(
            ("weight_bits", "activation_bits", "gradient_bits"),
            (weight_bits, activation_bits, gradient_bits),
            defaults,
        )
    }
    for field, value in bits.items():
        _check_bits(field, value)
    spec = QuantizationSpec(
        method,
        **bits,
        stochastic=stochastic,
        input_scale=input_scale,
        quantize_first=quantize_first,
        quantize_last=quantize_last,
    )
    _check_combination(spec)
    return spec


def _check_combination(spec: QuantizationSpec) -> None:
    method = spec.method

    def refuse(what: str) -> None:
        raise UsageError(f"model.quantization: {what} (method {method!r})")

    if method == "none":
        changed = [
            field.name
            for field in dataclasses.fields(spec)
            if getattr(spec, field.name) != field.default
        ]
        if changed:
            refuse(
                f"{', '.join(changed)} set without a quantization method; valid methods: "
                f"{', '.join(METHODS[1:])}"
            )
        return
    if method in ("binaryconnect", "bnn", "xnor") and spec.weight_bits != 1:
        refuse(f"weight_bits must be 1, got {spec.weight_bits}")
    if method == "binaryconnect" and spec.activation_bits != FULL_PRECISION:
        refuse("BinaryConnect binarizes weights only; activation_bits must be 32")
    if method == "bnn" and spec.activation_bits != 1:
        refuse(f"activation_bits must be 1, got {spec.activation_bits}")
    if method == "xnor" and spec.activation_bits not in (1, FULL_PRECISION):
        refuse(
            f"activation_bits must be 1 (XNOR) or 32 (binary-weight network), "
            f"got {spec.activation_bits}"
        )
    if method != "dorefa" and spec.gradient_bits != FULL_PRECISION:
        refuse("only dorefa quantizes gradients; gradient_bits must be 32")
    if spec.stochastic and method not in STOCHASTIC_METHODS:
        refuse(f"stochastic quantization exists for {', '.join(sorted(STOCHASTIC_METHODS))} only")
    if spec.input_scale and not (method == "xnor" and spec.activation_bits == 1):
        refuse("input_scale is XNOR-Net's K and needs method xnor with activation_bits 1")


# --- quantized layers ---------------------------------------------------------------------------


class _QuantizedLayer(nn.Module):
    """What quantized conv and dense layers share: latent weights, the keys, the bias."""

    features: int
    spec: QuantizationSpec
    quantize_input: bool = True  # False for a first layer: its input is the image
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.he_normal()
    dtype: Dtype = jnp.float32

    @nn.nowrap
    def _keys(self) -> tuple[jax.Array | None, jax.Array | None, jax.Array | None]:
        """Keys for the weights, the inputs and the gradient: drawn at train (when the stream
        exists) and only for what is stochastic; None otherwise."""
        spec = self.spec
        training = self.has_rng(RNG_STREAM)
        draw = lambda needed: self.make_rng(RNG_STREAM) if training and needed else None
        weight_key = draw(spec.stochastic and spec.weight_bits != FULL_PRECISION)
        input_key = draw(
            spec.stochastic
            and spec.method == "qnn"
            and self.quantize_input
            and spec.activation_bits != FULL_PRECISION
        )
        gradient_key = draw(spec.gradient_bits != FULL_PRECISION)
        return weight_key, input_key, gradient_key

    @nn.nowrap
    def _latent_init(self, key, shape, dtype):
        """``kernel_init``, clipped to [-1, 1] where the method clips latent weights after each
        update: they start inside the window they will be kept in (this changes only the rare
        values beyond 1 of layers with a fan-in below 10)."""
        kernel = self.kernel_init(key, shape, dtype)
        return jnp.clip(kernel, -1, 1) if self.spec.method in CLIPS_LATENT_WEIGHTS else kernel

    @nn.nowrap
    def _operands(self, x: jax.Array, kernel_shape: Sequence[int]):
        weight_key, input_key, gradient_key = self._keys()
        latent = self.param(
            self.spec.kernel_name, self._latent_init, tuple(kernel_shape), jnp.float32
        )
        kernel = self.spec.quantize_weights(latent, weight_key).astype(self.dtype)
        if self.quantize_input:
            x = self.spec.quantize_inputs(x, input_key)
        return x.astype(self.dtype), kernel, gradient_key

    @nn.nowrap
    def _finish(self, y: jax.Array, gradient_key: jax.Array | None) -> jax.Array:
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        if gradient_key is not None:
            y = quantize_gradient(y, gradient_key, self.spec.gradient_bits)
        return y


class QuantizedDense(_QuantizedLayer):
    """A dense layer with quantized weights and inputs (see the module docstring)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inputs, kernel, gradient_key = self._operands(x, (x.shape[-1], self.features))
        y = inputs @ kernel
        if self.spec.input_scale:
            # XNOR-Net's K for a dense layer: the mean |input| of each example.
            y = y * jnp.mean(jnp.abs(x), axis=-1, keepdims=True).astype(self.dtype)
        return self._finish(y, gradient_key)


class QuantizedConv(_QuantizedLayer):
    """A 2-D conv (NHWC inputs, HWIO kernel) with quantized weights and inputs."""

    kernel_size: Sequence[int] = (3, 3)
    strides: int = 1
    padding: PaddingLike = "SAME"

    @nn.nowrap
    def _convolve(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        return conv_general_dilated(
            x,
            kernel,
            (self.strides, self.strides),
            canonicalize_padding(self.padding, 2),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inputs, kernel, gradient_key = self._operands(
            x, (*self.kernel_size, x.shape[-1], self.features)
        )
        y = self._convolve(inputs, kernel)
        if self.spec.input_scale:
            # XNOR-Net's K: the mean |input| over channels, averaged over each receptive field
            # (a box filter with the conv's own window, strides and padding).
            mean_abs = jnp.mean(jnp.abs(x), axis=-1, keepdims=True).astype(self.dtype)
            box = jnp.full(
                (*self.kernel_size, 1, 1),
                1 / (self.kernel_size[0] * self.kernel_size[1]),
                self.dtype,
            )
            y = y * self._convolve(mean_abs, box)
        return self._finish(y, gradient_key)


def quantized_weight_layers(
    spec: QuantizationSpec,
) -> tuple[WeightLayerFactory, WeightLayerFactory]:
    """Conv and dense factories for the ``LayerKit``: quantized layers where ``spec.quantizes``
    the role, the plain full-precision ones elsewhere; all initialized by the kit's
    `weight_init`."""

    def conv(
        features,
        kernel_size,
        *,
        strides=1,
        padding="SAME",
        use_bias=True,
        role="hidden",
        dtype=jnp.float32,
        weight_init=None,
        name=None,
    ):
        if not spec.quantizes(role):
            return plain_conv(
                features,
                kernel_size,
                strides=strides,
                padding=padding,
                use_bias=use_bias,
                role=role,
                dtype=dtype,
                name=name,
                weight_init=weight_init,
            )
        return QuantizedConv(
            features=features,
            spec=spec,
            quantize_input=role != "first",
            use_bias=use_bias,
            kernel_init=kernel_initializer(weight_init, role, "conv"),
            dtype=dtype,
            kernel_size=tuple(kernel_size),
            strides=strides,
            padding=padding,
            name=name,
        )

    def dense(
        features, *, use_bias=True, role="hidden", dtype=jnp.float32, weight_init=None, name=None
    ):
        if not spec.quantizes(role):
            return plain_dense(
                features,
                use_bias=use_bias,
                role=role,
                dtype=dtype,
                name=name,
                weight_init=weight_init,
            )
        return QuantizedDense(
            features=features,
            spec=spec,
            quantize_input=role != "first",
            use_bias=use_bias,
            kernel_init=kernel_initializer(weight_init, role, "dense"),
            dtype=dtype,
            name=name,
        )

    return conv, dense

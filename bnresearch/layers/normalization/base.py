"""What every normalization shares: the base class, the learnable affine transform, moments, and
the checks that turn impossible configurations into one-line UsageErrors.

Every normalization is a linen Module with a ``dtype`` field and ``__call__(x, train)``. Inputs
are channels-last: (N, H, W, C) after a conv, (N, C) after a dense layer. Statistics and the
normalization itself are computed in float32 whatever ``dtype`` is, and only the output is cast to
``dtype``: reductions in bfloat16 lose too much precision, and the element-wise float32 work is
cheap next to the convs around it. Parameters are float32; persistent state lives in the
``STATE`` collection (``batch_stats``, ``bnresearch/layers/variables.py``).

Variances are biased (divide by the number of reduced elements) unless a paper says otherwise,
and computed in two passes, E[(x - E[x])^2], which unlike E[x^2] - E[x]^2 cannot cancel
catastrophically.
"""

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

from bnresearch.errors import UsageError
from bnresearch.layers.variables import ACTIVATIONS, ANALYSIS, RNG_STREAM
from bnresearch.measure.heterogeneity import heterogeneity_score


def check_epsilon(kind: str, epsilon: float) -> None:
    if not (isinstance(epsilon, (int, float)) and epsilon > 0):
        raise UsageError(f"{kind}: epsilon must be > 0, got {epsilon!r}")


def check_fraction(kind: str, option: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise UsageError(f"{kind}: {option} must lie in [0, 1], got {value!r}")


def check_choice(kind: str, option: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise UsageError(f"{kind}: unknown {option} {value!r}; valid: {', '.join(valid)}")


def check_positive_int(kind: str, option: str, value) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise UsageError(f"{kind}: {option} must be a positive int, got {value!r}")


BATCH_REMEDY = "use a larger batch or a per-example normalization (layer, group, frn, batchless)"


def check_enough_values(kind: str, count: int, statistic: str, remedy: str = BATCH_REMEDY) -> None:
    """Raises UsageError when `statistic` would be taken over a single value per channel.

    Its variance is then 0 and normalizing erases the input (the output is the shift alone, with
    zero gradient): the case of batch statistics on (N, C) features at batch size 1. Called while
    tracing, where shapes are static, so the error comes before any compute; ``build_model``
    traces the model abstractly at the run's batch sizes to raise it when the model is built.
    """
    if count < 2:
        raise UsageError(
            f"{kind}: {statistic} would be taken over one value per channel (variance 0, the "
            f"input erased); {remedy}"
        )


def scale_and_bias(module: nn.Module, num_features: int) -> tuple[jax.Array, jax.Array]:
    """The learnable per-channel affine transform: gain ``module.scale_init``, shift 0.

    The gain is named ``scale`` in every normalization: parameter groups (per-group lr, weight
    decay masks) find gammas by that name.
    """
    scale = module.param(
        "scale", nn.initializers.constant(module.scale_init), (num_features,), jnp.float32
    )
    bias = module.param("bias", nn.initializers.zeros, (num_features,), jnp.float32)
    return scale, bias


def mean_and_variance(x: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance over `axes` (kept as size-1 axes), two-pass."""
    mean = jnp.mean(x, axis=axes, keepdims=True)
    variance = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    return mean, variance


def running_average(running: jax.Array, statistic: jax.Array, momentum: float) -> jax.Array:
    """One step of the exponential moving average of a statistic, ``momentum`` weighing the old
    value: the update of every running statistic kept for evaluation (batch renorm's moving
    statistics aside, see ``renorm.py``)."""
    return momentum * running + (1.0 - momentum) * statistic


def spatial_axes(x: jax.Array) -> tuple[int, ...]:
    """The axes between the batch axis and the channel axis (none for (N, C) features)."""
    return tuple(range(1, x.ndim - 1))


def elements_per_channel(x: jax.Array, axes: tuple[int, ...]) -> int:
    count = 1
    for axis in axes:
        count *= x.shape[axis]
    return count


def covariate_noise(y: jax.Array, rng: jax.Array, shift: float, scale: float) -> jax.Array:
    """Santurkar et al.'s "noisy BatchNorm" (arXiv:1805.11604, section 2.1): non-stationary
    noise of non-zero mean and non-unit variance on every normalized activation.

    methods.md does not give the distribution, so this is ours, of the paper's kind: per call
    (each training step draws afresh, so the shift is non-stationary) and per channel c, a mean
    mu_c ~ U(-shift, shift) and a gain s_c ~ U(1, scale); then per example and position,
    y' = s_c y + m with m ~ N(mu_c, 1) drawn independently for every activation. Computed in
    float32, returned in y's dtype.
    """
    channels = y.shape[-1]
    mean_key, gain_key, noise_key = jax.random.split(rng, 3)
    mu = jax.random.uniform(mean_key, (channels,), jnp.float32, -shift, shift)
    gain = jax.random.uniform(gain_key, (channels,), jnp.float32, 1.0, scale)
    noise = mu + jax.random.normal(noise_key, y.shape, jnp.float32)
    return (gain * y.astype(jnp.float32) + noise).astype(y.dtype)


class Normalization(nn.Module):
    """Base of every normalization.

    Subclasses implement ``normalize(x, train)``; ``__call__`` adds what every normalization
    offers: with ``heterogeneity_threshold`` set, each training forward sows, into the
    ``analysis`` collection, the heterogeneity score of the layer's input
    (``bnresearch/measure/heterogeneity.py``) as ``heterogeneity`` and whether it reaches the
    threshold as ``bn_feasible`` (1 or 0). The train step logs both averaged over the layers:
    ``train/bn_feasible`` is the fraction of normalized layers whose batch is heterogeneous
    enough for batch statistics. The measurement reads the input and changes nothing, so any
    normalization, ``none`` included, can be assessed.

    Also, in training forwards only: with ``noise_shift`` or ``noise_gain`` set, the output
    gets ``covariate_noise`` (unset: shift 0, scale 1), the "noisy BN" experiment; and where
    the ``activations`` collection is mutable (the activation-statistics measurement), the
    layer sows its input and its output (``bnresearch/measure/activations.py``).
    """

    dtype: Dtype = jnp.float32
    heterogeneity_threshold: float | None = None
    # Noisy BN (``covariate_noise``): the half-width of the per-channel noise means' range,
    # >= 0, and the upper end of the per-channel gains' range U(1, noise_gain), >= 1.
    noise_shift: float | None = None
    noise_gain: float | None = None
    # Whether the layer ends with a learned per-channel shift; the conv or dense layer before it
    # then needs no bias of its own.
    adds_bias: ClassVar[bool] = True

    def __post_init__(self):
        threshold = self.heterogeneity_threshold
        if threshold is not None and not (isinstance(threshold, (int, float)) and threshold >= 0):
            raise UsageError(f"heterogeneity_threshold must be a number >= 0, got {threshold!r}")
        for option, value, low in (
            ("noise_shift", self.noise_shift, 0.0),
            ("noise_gain", self.noise_gain, 1.0),
        ):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if value is not None and not (number and low <= value < float("inf")):
                raise UsageError(f"{option} must be a finite number >= {low:g}, got {value!r}")
        super().__post_init__()

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if train and self.heterogeneity_threshold is not None and not self.is_initializing():
            score = heterogeneity_score(x)
            self.sow(ANALYSIS, "heterogeneity", score)
            self.sow(
                ANALYSIS, "bn_feasible", (score >= self.heterogeneity_threshold).astype(jnp.float32)
            )
        y = self.normalize(x, train)
        noisy = self.noise_shift is not None or self.noise_gain is not None
        if train and noisy and not self.is_initializing():
            shift = 0.0 if self.noise_shift is None else self.noise_shift
            scale = 1.0 if self.noise_gain is None else self.noise_gain
            y = covariate_noise(y, self.make_rng(RNG_STREAM), shift, scale)
        # Asked before anything is computed, so a forward that does not collect the statistics
        # (every train step) traces exactly the program it traced without them.
        if train and self.is_mutable_collection(ACTIVATIONS) and not self.is_initializing():
            self.sow(ACTIVATIONS, "input", x)
            self.sow(ACTIVATIONS, "output", y)
        return y

    def normalize(self, x: jax.Array, train: bool) -> jax.Array:
        raise NotImplementedError

    @nn.nowrap
    def check_features(self, num_features: int) -> None:
        """Raises UsageError if this normalization cannot normalize `num_features` channels.

        Models call it from ``build_model`` for every width they normalize, so that a bad
        configuration fails when the model is built rather than at init. Most accept anything.
        """

    @nn.nowrap
    def check_batch_sizes(self, batch_size: int, eval_batch_size: int | None) -> None:
        """Raises UsageError if this normalization cannot work at these (global) batch sizes.

        Called by ``build_model`` (and so by the config check) when the batch sizes are known.
        Shape-dependent impossibilities (one value per channel) are raised while tracing; see
        ``check_enough_values``.
        """

    @nn.nowrap
    def adapt_kit(self, kit):
        """The LayerKit this normalization needs, given the one the config builds.

        Most normalizations return it unchanged. Weight normalization replaces the weight
        layers, FRN the activation (its TLU), Kalman normalization the weight layers (so they
        report their kernels). Called once by ``build_model``; raises UsageError when the kit
        cannot be adapted (e.g. its weight layers were already replaced by quantized ones).
        """
        return kit

    @nn.nowrap
    def open_forward(self, kit):
        """The LayerKit one forward pass of the model builds its layers from, given the model's
        (``LayerKit.for_forward`` calls it at the top of every forward pass).

        Most normalizations return it unchanged. Batch Kalman norm returns a kit whose layers
        share a record of that pass, fresh at every pass, through which each of its layers
        receives the previous one's statistics.
        """
        return kit


class Identity(Normalization):
    """No normalization: passes the input through, cast to ``dtype``; no parameters."""

    adds_bias: ClassVar[bool] = False

    def normalize(self, x: jax.Array, train: bool) -> jax.Array:
        del train
        return x.astype(self.dtype)

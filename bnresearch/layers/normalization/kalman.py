"""Batch Kalman normalization (BKN).

Reference: Wang, Peng, Luo, Wang & Lin, "Batch Kalman Normalization: Towards Training Deep Neural
Networks with Micro-Batches", 2018, arXiv:1802.03133 (the authors' code:
github.com/wanggrun/Kalman-Normalization).

Layer k's normalization statistics fuse the moments it observes in the batch with moments
predicted from layer k-1's fused moments, propagated through the layers between them:

  mu_hat  = p mu_pred + (1 - p) mu_obs
  var_hat = p var_pred + (1 - p) var_obs + p (1 - p) (mu_pred - mu_obs)^2

with p = 0.9 (``prediction_weight``, the authors' code). The fusion is skipped (mu_obs, var_obs
are used) when mean(var_pred / var_obs) >= 100 (``max_variance_ratio``); the first normalized
layer has no prediction and is plain batch norm. Evaluation normalizes with EMAs of the fused
statistics (``momentum`` on the old value, default 0.9, as in the authors' code).

How the prediction is made. The layers of a flax model pass nothing to each other but the
activations, so each forward pass opens a record (``KalmanRecord``) that its layers share:
``BatchKalmanNorm.open_forward``, which the model's ``LayerKit.for_forward()`` calls at the top of
every ``init``/``apply``, returns the kit of that pass, whose weight layers and BKN layers all
hold the same fresh record as a field (nothing carries over from one call or trace to the next):
  - the weight layers of the kit (``adapt_kit`` replaces the plain conv and dense factories by
    the recording ones below, initialized identically) append their kernel and bias;
  - each BKN layer, in training mode, reads the output moments the previous BKN layer left and
    the one weight layer recorded since, predicts, fuses, and leaves its own output moments.
A BKN layer built without a record (alone, outside a model) has no predecessor: batch norm.
The record lives in one trace: a model whose blocks were traced apart from each other
(``nn.remat``, ``nn.scan``) would have to pass it between them as a value instead.
The prediction is the expectation of the authors' Monte-Carlo estimate, computed analytically
under the same assumptions (independent Gaussian channels): layer k-1's input is taken as
N(mu_hat, var_hat) per channel; its output, normalized with those moments, is then
N(beta, gamma^2 var_hat / (var_hat + eps)); the model's activation a (any parameter-free one)
maps it to E[a(z)], Var[a(z)] by Gauss-Hermite quadrature; the weight layer with kernel W
(window x C_in x C_out) and bias b gives mu_pred = sum W E[a] + b, var_pred = sum W^2 Var[a],
the sums over the window and the input channels. The authors' code feeds its samples through
ReLU and the conv directly, without the normalization and affine transform of layer k-1; here
the transform the signal actually undergoes is used. Gradients flow through the prediction (into
W, gamma, beta and the statistics), as they flow through the authors' sampled statistics.

Which layers are linked: a BKN layer predicts only when exactly one weight layer was called since
the previous BKN layer and its input and output channels match. Residual additions are not seen:
in a ResNet block the next block's first conv is predicted from the last BKN layer before it (the
branch's, or the projection shortcut's when there is one), ignoring the other summand; a
projection shortcut conv, whose input channels differ from the branch's output, gets no
prediction (plain batch norm), as does every first layer.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bnresearch.errors import UsageError
from bnresearch.layers.kit import plain_conv, plain_dense
from bnresearch.layers.normalization.base import (
    Normalization,
    check_enough_values,
    check_epsilon,
    check_fraction,
    elements_per_channel,
    mean_and_variance,
    running_average,
    scale_and_bias,
)
from bnresearch.layers.normalization.weight import require_plain_weight_layers
from bnresearch.layers.options import option
from bnresearch.layers.registry import ModuleFactory
from bnresearch.layers.variables import STATE

KIND = "batch_kalman norm"
# Gauss-Hermite nodes and weights for E[f(z)], z ~ N(m, s^2):
# sum_i w_i f(m + sqrt(2) s x_i) / sqrt(pi). 128 nodes keep the relative error of ReLU's
# moments (a kink, where the rule converges slowly) near 0.3% at m = 0; smooth activations
# converge much faster.
_NODES, _WEIGHTS = np.polynomial.hermite.hermgauss(128)


def gaussian_activation_moments(activation, mean: jax.Array, var: jax.Array):
    """E[a(z)] and Var[a(z)] for z ~ N(mean, var), elementwise, by Gauss-Hermite quadrature."""
    nodes = jnp.asarray(_NODES, jnp.float32)
    weights = jnp.asarray(_WEIGHTS / np.sqrt(np.pi), jnp.float32)
    points = mean[..., None] + jnp.sqrt(2.0 * var)[..., None] * nodes
    values = activation(points)
    first = jnp.sum(weights * values, axis=-1)
    second = jnp.sum(weights * jnp.square(values), axis=-1)
    return first, jnp.maximum(second - jnp.square(first), 0.0)


def propagate_moments(
    mean: jax.Array, var: jax.Array, kernel: jax.Array, bias: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """Per-channel moments through a conv or dense kernel (..., C_in, C_out), inputs independent."""
    taps = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1])
    out_mean = jnp.einsum("tio,i->o", taps, mean)
    out_var = jnp.einsum("tio,i->o", jnp.square(taps), var)
    if bias is not None:
        out_mean = out_mean + bias
    return out_mean, out_var


def kalman_fuse(
    predicted_mean,
    predicted_var,
    observed_mean,
    observed_var,
    *,
    prediction_weight: float,
    max_variance_ratio: float,
):
    """The fused moments, or the observed ones where mean(var_pred / var_obs) >= the limit."""
    p = prediction_weight
    fused_mean = p * predicted_mean + (1 - p) * observed_mean
    fused_var = (
        p * predicted_var
        + (1 - p) * observed_var
        + p * (1 - p) * jnp.square(predicted_mean - observed_mean)
    )
    use_prediction = jnp.mean(predicted_var / observed_var) < max_variance_ratio
    return (
        jnp.where(use_prediction, fused_mean, observed_mean),
        jnp.where(use_prediction, fused_var, observed_var),
    )


# Compared and hashed by identity (eq=False): each forward pass has its own record, and the
# modules and kits that hold one stay hashable.
@dataclasses.dataclass(eq=False)
class KalmanRecord:
    """What one forward pass has recorded so far for the next BKN layer: the output moments the
    last BKN layer left, and the (kernel, bias) of each weight layer called since."""

    output_moments: tuple[jax.Array, jax.Array] | None = None
    weight_layers: list = dataclasses.field(default_factory=list)


def _recorded(layer: nn.Module, outputs: jax.Array) -> jax.Array:
    """`outputs`, after `layer` (a weight layer with a `record` field) has added its kernel and
    bias to its record, if it has one."""
    if layer.record is not None:
        params = layer.variables["params"]
        layer.record.weight_layers.append((params["kernel"], params.get("bias")))
    return outputs


class KalmanConv(nn.Conv):
    """``nn.Conv`` that records its kernel and bias in ``record`` for the next BKN layer."""

    record: KalmanRecord | None = None

    def __call__(self, inputs: jax.Array) -> jax.Array:
        return _recorded(self, super().__call__(inputs))


class KalmanDense(nn.Dense):
    """``nn.Dense`` that records its kernel and bias in ``record`` for the next BKN layer."""

    record: KalmanRecord | None = None

    def __call__(self, inputs: jax.Array) -> jax.Array:
        return _recorded(self, super().__call__(inputs))


class BatchKalmanNorm(Normalization):
    """Batch Kalman normalization (Wang et al. 2018); see the module docstring.

    ``activation`` is not an option: ``adapt_kit`` binds the model's activation, through which
    the prediction passes (None: ReLU). Nor is ``record``, the record of the forward pass that
    ``open_forward`` binds (None: no predecessor, so no prediction).
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    scale_init: float = 1.0
    prediction_weight: float = 0.9
    max_variance_ratio: float = 100.0
    activation: ModuleFactory | None = None
    record: KalmanRecord | None = None

    def __post_init__(self):
        check_fraction(KIND, "momentum", self.momentum)
        check_fraction(KIND, "prediction_weight", self.prediction_weight)
        check_epsilon(KIND, self.epsilon)
        if not (isinstance(self.max_variance_ratio, (int, float)) and self.max_variance_ratio > 0):
            raise UsageError(
                f"{KIND}: max_variance_ratio must be > 0, got {self.max_variance_ratio!r}"
            )
        super().__post_init__()

    @nn.nowrap
    def activation_function(self):
        if self.activation is None:
            return jax.nn.relu
        module = self.activation(parent=None)
        return lambda z: module.apply({}, z)

    @nn.compact
    def normalize(self, x: jax.Array, train: bool) -> jax.Array:
        epsilon = option(self, "epsilon", self.epsilon)
        momentum = option(self, "momentum", self.momentum)
        num_features = x.shape[-1]
        scale, bias = scale_and_bias(self, num_features)
        running_mean = self.variable(STATE, "mean", jnp.zeros, (num_features,), jnp.float32)
        running_var = self.variable(STATE, "var", jnp.ones, (num_features,), jnp.float32)
        x = x.astype(jnp.float32)
        if not train:
            mean, var = running_mean.value, running_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            check_enough_values(
                KIND, elements_per_channel(x, axes), f"a batch statistic of {x.shape} features"
            )
            observed_mean, observed_var = mean_and_variance(x, axes)
            mean = observed_mean.reshape(num_features)
            var = observed_var.reshape(num_features)
            prediction = self._predict(num_features)
            if prediction is not None:
                mean, var = kalman_fuse(
                    *prediction,
                    mean,
                    var,
                    prediction_weight=self.prediction_weight,
                    max_variance_ratio=self.max_variance_ratio,
                )
            if self.record is not None:
                # What the next BKN layer starts from: this layer's output, modelled as
                # N(beta, gamma^2 var / (var + eps)) per channel.
                self.record.output_moments = (bias, jnp.square(scale) * var / (var + epsilon))
                self.record.weight_layers = []
            if not self.is_initializing():
                running_mean.value = running_average(running_mean.value, mean, momentum)
                running_var.value = running_average(running_var.value, var, momentum)
        y = (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias
        return y.astype(self.dtype)

    @nn.nowrap
    def _predict(self, num_features: int):
        """Predicted (mean, var) of this layer's input, or None when no link applies."""
        record = self.record
        if record is None or record.output_moments is None or len(record.weight_layers) != 1:
            return None
        kernel, bias = record.weight_layers[0]
        in_mean, in_var = record.output_moments
        if kernel.shape[-2] != in_mean.shape[0] or kernel.shape[-1] != num_features:
            return None
        act_mean, act_var = gaussian_activation_moments(self.activation_function(), in_mean, in_var)
        return propagate_moments(act_mean, act_var, kernel, bias)

    @nn.nowrap
    def adapt_kit(self, kit):
        require_plain_weight_layers(kit, KIND)
        probe = jax.eval_shape(
            kit.activation_factory(parent=None).init,
            jax.random.key(0),
            jax.ShapeDtypeStruct((1, 2), jnp.float32),
        )
        if probe:
            raise UsageError(
                f"{KIND}: its prediction passes moments through the activation, "
                "which must have no parameters"
            )
        return dataclasses.replace(
            kit,
            conv_factory=functools.partial(plain_conv, layer=KalmanConv),
            dense_factory=functools.partial(plain_dense, layer=KalmanDense),
            norm_factory=functools.partial(kit.norm_factory, activation=kit.activation_factory),
        )

    @nn.nowrap
    def open_forward(self, kit):
        """The kit `kit` (as ``adapt_kit`` made it) with a fresh record bound into its weight
        layers and BKN layers."""
        record = KalmanRecord()
        return dataclasses.replace(
            kit,
            conv_factory=functools.partial(kit.conv_factory, record=record),
            dense_factory=functools.partial(kit.dense_factory, record=record),
            norm_factory=functools.partial(kit.norm_factory, record=record),
        )

"""Batch renormalization.

Reference: Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in
Batch-Normalized Models", NeurIPS 2017, arXiv:1702.03275.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnresearch.errors import UsageError
from bnresearch.layers.normalization.base import (
    Normalization,
    check_enough_values,
    check_epsilon,
    check_fraction,
    elements_per_channel,
    mean_and_variance,
    scale_and_bias,
)
from bnresearch.layers.options import option
from bnresearch.layers.variables import STATE

KIND = "batch renorm"


def linear_ramp(step: jax.Array, start: int, end: int) -> jax.Array:
    """0 up to `start`, 1 from `end` on, linear in between (a step at `start` if end <= start)."""
    if end <= start:
        return (step >= start).astype(jnp.float32)
    return jnp.clip((step - start) / (end - start), 0.0, 1.0).astype(jnp.float32)


def renorm_limits(
    step: jax.Array, *, rmax: float, dmax: float, relax_start: int, rmax_end: int, dmax_end: int
) -> tuple[jax.Array, jax.Array]:
    """The clipping bounds at `step`: r_max from 1 to `rmax` and d_max from 0 to `dmax`, both
    held until `relax_start` and relaxed linearly to reach their final values at `rmax_end` and
    `dmax_end` (Ioffe 2017, section 4: 5k, then r_max = 3 at 40k and d_max = 5 at 25k)."""
    r_limit = 1.0 + (rmax - 1.0) * linear_ramp(step, relax_start, rmax_end)
    d_limit = dmax * linear_ramp(step, relax_start, dmax_end)
    return r_limit, d_limit


class BatchRenorm(Normalization):
    """Batch renormalization (Ioffe 2017): batch norm corrected towards the moving statistics.

    Training, per channel, with batch statistics mu_B and sigma_B = sqrt(var_B + eps) and the
    moving mean mu and moving standard deviation sigma:
      r = sg(clip(sigma_B / sigma, 1/r_max, r_max)),
      d = sg(clip((mu_B - mu) / sigma, -d_max, d_max))
      y = gamma * ((x - mu_B) / sigma_B * r + d) + beta
    then mu += (1 - momentum) (mu_B - mu) and sigma += (1 - momentum) (sigma_B - sigma), the
    paper's Algorithm 1 (its update rate alpha is 1 - momentum; momentum weighs the old value,
    default 0.99). Evaluation: y = gamma (x - mu) / sigma + beta. With r_max = 1 and d_max = 0
    training is batch norm.

    The bounds follow a schedule over training steps (``renorm_limits``): r_max = 1, d_max = 0
    until ``relax_start`` (5000), then linearly to ``rmax`` (3) at ``rmax_end`` (40000) and to
    ``dmax`` (5) at ``dmax_end`` (25000). The steps are optimizer updates: a counter in
    ``batch_stats`` (so it is checkpointed and a resumed run continues the schedule exactly)
    counts forward passes in training mode after ``init``, and the schedule reads it divided by
    ``accumulation_steps``, the forward passes (micro-batches) of one update, a fact
    ``build_model`` passes in.
    """

    momentum: float = 0.99
    epsilon: float = 1e-5
    scale_init: float = 1.0
    rmax: float = 3.0
    dmax: float = 5.0
    relax_start: int = 5000
    rmax_end: int = 40000
    dmax_end: int = 25000
    # A build-time fact, not an option: train-mode forward passes per optimizer update.
    accumulation_steps: int = 1

    def __post_init__(self):
        check_fraction(KIND, "momentum", self.momentum)
        check_epsilon(KIND, self.epsilon)
        if not (isinstance(self.rmax, (int, float)) and self.rmax >= 1.0):
            raise UsageError(f"{KIND}: rmax must be >= 1, got {self.rmax!r}")
        if not (isinstance(self.dmax, (int, float)) and self.dmax >= 0.0):
            raise UsageError(f"{KIND}: dmax must be >= 0, got {self.dmax!r}")
        for field in ("relax_start", "rmax_end", "dmax_end"):
            value = getattr(self, field)
            if not (isinstance(value, int) and value >= 0):
                raise UsageError(f"{KIND}: {field} must be a step number >= 0, got {value!r}")
        super().__post_init__()

    @nn.compact
    def normalize(self, x: jax.Array, train: bool) -> jax.Array:
        epsilon = option(self, "epsilon", self.epsilon)
        momentum = option(self, "momentum", self.momentum)
        num_features = x.shape[-1]
        scale, bias = scale_and_bias(self, num_features)
        moving_mean = self.variable(STATE, "mean", jnp.zeros, (num_features,), jnp.float32)
        moving_std = self.variable(STATE, "std", jnp.ones, (num_features,), jnp.float32)
        steps = self.variable(STATE, "steps", jnp.zeros, (), jnp.int32)
        x = x.astype(jnp.float32)
        if not train:
            y = (x - moving_mean.value) / moving_std.value
            return (y * scale + bias).astype(self.dtype)

        axes = tuple(range(x.ndim - 1))
        check_enough_values(
            KIND, elements_per_channel(x, axes), f"a batch statistic of {x.shape} features"
        )
        batch_mean, batch_var = mean_and_variance(x, axes)
        batch_mean, batch_var = batch_mean.reshape(num_features), batch_var.reshape(num_features)
        batch_std = jnp.sqrt(batch_var + epsilon)
        r_limit, d_limit = renorm_limits(
            steps.value // self.accumulation_steps,
            rmax=self.rmax,
            dmax=self.dmax,
            relax_start=self.relax_start,
            rmax_end=self.rmax_end,
            dmax_end=self.dmax_end,
        )
        r = jax.lax.stop_gradient(jnp.clip(batch_std / moving_std.value, 1.0 / r_limit, r_limit))
        d = jax.lax.stop_gradient(
            jnp.clip((batch_mean - moving_mean.value) / moving_std.value, -d_limit, d_limit)
        )
        y = (x - batch_mean) / batch_std * r + d
        if not self.is_initializing():
            # The paper's form, old + rate * (new - old), rather than base.running_average's
            # momentum * old + rate * new: equal in exact arithmetic, but they round differently
            # in float32 (about one update in eight differs in its last bit), and this form is
            # the one batch renorm's runs so far were trained with.
            rate = 1.0 - momentum
            moving_mean.value = moving_mean.value + rate * (batch_mean - moving_mean.value)
            moving_std.value = moving_std.value + rate * (batch_std - moving_std.value)
            steps.value = steps.value + 1
        return (y * scale + bias).astype(self.dtype)

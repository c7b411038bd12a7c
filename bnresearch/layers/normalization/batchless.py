"""Batchless normalization: statistics learned as parameters through a Gaussian likelihood.

Reference: Berger & Uc Cetina, "Batchless Normalization: How to Normalize Activations Across
Instances with Minimal Memory Requirements", 2022, arXiv:2212.14729.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnresearch.layers.normalization.base import Normalization, scale_and_bias
from bnresearch.layers.variables import AUX_LOSS

# The name of this layer's term in the aux_loss collection.
AUX_LOSS_NAME = "gaussian_nll"


def gaussian_nll(x: jax.Array, mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
    """mean(log sigma) + 0.5 mean(((x - mu) / sigma)^2): the negative log-likelihood of x under
    N(mu, sigma^2) per channel, up to a constant (the first mean over channels, the second over
    every element)."""
    return jnp.mean(log_sigma) + 0.5 * jnp.mean(jnp.square((x - mu) * jnp.exp(-log_sigma)))


class BatchlessNorm(Normalization):
    """Batchless normalization (Berger & Uc Cetina 2022).

    Per channel, parameters mu (init 0) and log sigma (init 0) besides gamma and beta:
      y = gamma (x - sg(mu)) sg(1 / sigma) + beta
    the same computation in training and evaluation, with no running state, at any batch size
    (batch size 1 included). mu and sigma learn only from the auxiliary loss each layer sows into
    the ``aux_loss`` collection in training mode,
      mean(log sigma) + 0.5 mean(((sg(x) - mu) / sigma)^2),
    which the train step adds (weight 1) to the objective and logs as ``train/aux_loss``; its
    minimum is at the moments of the layer's input. The stop-gradients keep the two apart: the
    task loss does not move mu and sigma, and the likelihood does not move the layers below.

    mu and log sigma are vectors not named ``scale``, so they are in the ``bias`` parameter group:
    ``optimizer.weight_decay_on=kernels`` keeps weight decay from pulling them towards 0.
    """

    scale_init: float = 1.0

    @nn.compact
    def normalize(self, x: jax.Array, train: bool) -> jax.Array:
        num_features = x.shape[-1]
        scale, bias = scale_and_bias(self, num_features)
        mu = self.param("mu", nn.initializers.zeros, (num_features,), jnp.float32)
        log_sigma = self.param("log_sigma", nn.initializers.zeros, (num_features,), jnp.float32)
        x = x.astype(jnp.float32)
        if train and not self.is_initializing():
            self.sow(AUX_LOSS, AUX_LOSS_NAME, gaussian_nll(jax.lax.stop_gradient(x), mu, log_sigma))
        inverse_sigma = jax.lax.stop_gradient(jnp.exp(-log_sigma))
        y = (x - jax.lax.stop_gradient(mu)) * inverse_sigma * scale + bias
        return y.astype(self.dtype)

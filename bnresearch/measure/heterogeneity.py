"""Batch heterogeneity: how much the examples of a batch differ, relative to how much the features
of one example differ. The score behind the BN feasibility assessment: batches whose score falls
below a threshold are judged not to need (or not to support) batch normalization.

Definition. Flatten each example of a batch x of shape (N, ...) into a vector f_n of D features.
Two dispersions decompose the same total variance of the N x D entries in two ways:

  between-example  B = mean over features d of Var_n(f_nd)   (the variance batch norm divides by,
                                                              averaged over the features)
  within-example   W = mean over examples n of Var_d(f_nd)   (the variance layer norm divides by,
                                                              averaged over the examples)

and the score is H = B / (W + epsilon). H = 0 when every example of the batch is the same (batch
statistics then carry no information, and batch norm divides by zero); H grows as the examples
of the batch spread apart relative to the spread inside an example. H does not change when all
of x is multiplied by a constant or shifted by a constant, and it does not depend on the order of
the examples or of the features.

Under ``jax.jit`` with the batch sharded over a mesh the means are over the global batch, like
batch norm's statistics.
"""

import jax
import jax.numpy as jnp

DEFAULT_EPSILON = 1e-6


def heterogeneity_score(x: jax.Array, epsilon: float = DEFAULT_EPSILON) -> jax.Array:
    """The between-example over within-example dispersion ratio of batch `x` (float32 scalar).

    `x` is (N, ...) with N >= 1; variances are biased (divide by N, and by D). At N = 1 the
    score is 0: one example is as homogeneous as a batch can be.
    """
    features = jnp.reshape(x, (x.shape[0], -1)).astype(jnp.float32)
    between = jnp.mean(jnp.var(features, axis=0))
    within = jnp.mean(jnp.var(features, axis=1))
    return between / (within + epsilon)

"""Train-time regularizers inside the model: dropout, alpha-dropout and stochastic depth.

Each takes ``train`` and is the identity (dropout) or a fixed rescaling (stochastic depth) at
evaluation. Their randomness comes from the one train-time stream ``RNG_STREAM``, so a resumed
run draws exactly what an uninterrupted one draws. Models get them from the ``LayerKit``
(``kit.dropout(placement=...)``, ``kit.stochastic_depth(...)``), which holds the rates the config
chose. (Label smoothing and masked weight decay act on the loss and the optimizer: see
``train/steps.py`` and ``optim/groups.py``.)

References:
  dropout: Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov, "Dropout: A Simple Way to
    Prevent Neural Networks from Overfitting", JMLR 2014.
  alpha-dropout: Klambauer, Unterthiner, Mayr & Hochreiter, "Self-Normalizing Neural Networks",
    NeurIPS 2017, arXiv:1706.02515, section 3 ("New dropout technique").
  stochastic depth: Huang, Sun, Liu, Sedra & Weinberger, "Deep Networks with Stochastic Depth",
    ECCV 2016, arXiv:1603.09382.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnresearch.errors import UsageError
from bnresearch.layers.activations import SELU_ALPHA, SELU_SCALE
from bnresearch.layers.options import option
from bnresearch.layers.variables import RNG_STREAM

DROPOUT_PLACEMENTS = ("input", "hidden", "head")

# The value SELU saturates to for large negative inputs, -lambda * alpha: alpha-dropout sets
# dropped units to it (Klambauer et al. 2017, section 3).
SELU_SATURATION = -SELU_SCALE * SELU_ALPHA


def check_drop_rate(what: str, rate: float) -> None:
    if not (isinstance(rate, (int, float)) and 0.0 <= rate < 1.0):
        raise UsageError(f"{what} must lie in [0, 1), got {rate!r}")


def is_zero(rate) -> bool:
    """Whether a drop rate is a Python 0, so the layer is the identity and draws nothing. A
    member's own rate in a population (a traced value, layers/options.py) always takes the
    dropout path: at rate 0 every unit is kept (bernoulli(1) is always true) and divided by 1, so
    that member's output is still exactly its input."""
    return isinstance(rate, (int, float)) and rate == 0.0


class Dropout(nn.Module):
    """Inverted dropout: at train each unit is zeroed with probability ``rate`` and the kept ones
    are divided by 1 - rate, so the expectation is unchanged and evaluation is the identity."""

    rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        rate = option(self, "rate", self.rate)
        if not train or is_zero(rate):
            return x
        keep = 1.0 - rate
        kept = jax.random.bernoulli(self.make_rng(RNG_STREAM), keep, x.shape)
        return jnp.where(kept, x / keep, 0).astype(x.dtype)


class AlphaDropout(nn.Module):
    """Alpha-dropout for SELU networks: dropped units are set to SELU's saturation value
    alpha' = -lambda alpha, then a x + b restores mean 0 and variance 1 for inputs with mean 0
    and variance 1, where, with q = 1 - rate, a = (q + alpha'^2 q (1 - q))^(-1/2) and
    b = -a (1 - q) alpha'. Identity at evaluation."""

    rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        rate = option(self, "rate", self.rate)
        if not train or is_zero(rate):
            return x
        keep = 1.0 - rate
        a = (keep + SELU_SATURATION**2 * keep * (1 - keep)) ** -0.5
        b = -a * (1 - keep) * SELU_SATURATION
        kept = jax.random.bernoulli(self.make_rng(RNG_STREAM), keep, x.shape)
        return (a * jnp.where(kept, x, SELU_SATURATION) + b).astype(x.dtype)


def linear_survival(block: int, num_blocks: int, final_drop: float) -> float:
    """Huang et al.'s linear decay rule: block l of L (counted from 1) survives with probability
    p_l = 1 - (l / L) (1 - p_L), where 1 - p_L = ``final_drop`` (0.5 in the paper)."""
    return 1.0 - block / num_blocks * final_drop


class StochasticDepth(nn.Module):
    """Applied to a residual branch before it is added to the shortcut.

    At train the whole branch is kept with probability ``survival`` or dropped: one Bernoulli
    draw per block per batch (not per example), as in the paper, so a dropped block costs no
    gradient. Kept branches are not rescaled at train; at evaluation the branch is multiplied
    by ``survival``, its expectation at train.
    """

    survival: float = 1.0

    @nn.compact
    def __call__(self, branch: jax.Array, train: bool) -> jax.Array:
        if self.survival == 1.0:
            return branch
        if not train:
            return (branch * self.survival).astype(branch.dtype)
        survives = jax.random.bernoulli(self.make_rng(RNG_STREAM), self.survival)
        return jnp.where(survives, branch, jnp.zeros_like(branch))

"""Pieces shared by the model families: weight init and option checks."""
from collections.abc import Sequence

import flax.linen as nn
from bnresearch.errors import UsageError

# He et al. 2015 ("Delving Deep into Rectifiers", arXiv:1502.01852) normal init, fan_in mode,
# for every conv and hidden dense layer. fan_in keeps the variance of the forward activations
# constant through ReLU layers, which is what matters when a model runs with norm='none' (with a
# normalization after each layer, the weight scale is divided out anyway). fan_in and fan_out
# differ only where the channel count changes. JAX's he_normal draws from a truncated normal
# rescaled to the same variance 2 / fan_in.
HE_NORMAL = nn.initializers.he_normal()


def check_positive_int(model: str, option: str, value) -> None:
    if not (isinstance(value, int) and value > 0):
        raise UsageError(f'{model}: {option} must be a positive int, got {value!r}')


def check_positive_ints(model: str, option: str, values: Sequence[int]) -> None:
    if not (isinstance(values, Sequence) and values
            and all(isinstance(value, int) and value > 0 for value in values)):
        raise UsageError(f'{model}: {option} must be a non-empty sequence of positive ints, '
                         f'got {values!r}')

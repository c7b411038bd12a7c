"""Activations against NumPy, and registry errors."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnresearch.layers import ACTIVATIONS, get_activation

X = np.linspace(-4.0, 4.0, 33, dtype=np.float32).reshape(3, 11)


@pytest.mark.parametrize('name, options, expected', [
    ('relu', {}, np.maximum(X, 0)),
    ('elu', {}, np.where(X > 0, X, np.expm1(X.astype(np.float64)))),
    ('elu', {'alpha': 0.5}, np.where(X > 0, X, 0.5 * np.expm1(X.astype(np.float64)))),
])
def test_activation_matches_numpy(name, options, expected):
    activation = get_activation(name, **options)()
    variables = activation.init(jax.random.key(0), X)
    np.testing.assert_allclose(activation.apply(variables, X), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('name', list(ACTIVATIONS))
def test_activation_keeps_input_dtype(name):
    activation = get_activation(name)()
    assert activation.apply({}, jnp.asarray(X, jnp.bfloat16)).dtype == jnp.bfloat16


def test_registry_names_valid_choices():
    with pytest.raises(ValueError, match=re.escape('valid activations: relu, elu')):
        get_activation('gelu')
    with pytest.raises(ValueError, match=re.escape("option(s) 'beta' for activation 'elu'; "
                                                   'valid options: alpha')):
        get_activation('elu', beta=1.0)
    with pytest.raises(ValueError, match=re.escape('valid options: (none)')):
        get_activation('relu', alpha=1.0)

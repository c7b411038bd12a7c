"""The landscape probes against a quadratic loss, whose every quantity has a closed form."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bnresearch.errors import UsageError
from bnresearch.measure.landscape import check_landscape_config, probe

STEP_SIZES = (0.05, 0.1, 0.3, 0.7)


def quadratic(hessian, linear):
    """L(theta) = 1/2 theta^T H theta + b^T theta over the parameters {"a": 2, "b": 3} flattened."""

    def loss(params):
        theta = jnp.concatenate([params["a"], params["b"]])
        return 0.5 * theta @ hessian @ theta + linear @ theta

    return jax.value_and_grad(loss)


def as_params(theta):
    return {"a": jnp.asarray(theta[:2], jnp.float32), "b": jnp.asarray(theta[2:], jnp.float32)}


def spd(seed):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(5, 5)))[0]
    return basis @ np.diag([0.5, 1.0, 2.0, 4.0, 9.0]) @ basis.T, basis


def test_a_quadratic_gives_the_closed_forms():
    hessian, _ = spd(0)
    rng = np.random.default_rng(1)
    theta, linear = rng.normal(size=5), rng.normal(size=5)
    scalars = probe(
        quadratic(jnp.asarray(hessian, jnp.float32), jnp.asarray(linear, jnp.float32)),
        as_params(theta),
        STEP_SIZES,
    )
    g = hessian @ theta + linear
    loss = 0.5 * theta @ hessian @ theta + linear @ theta
    etas = np.array(STEP_SIZES)
    # L(theta - eta g) = L - eta g.g + eta^2 / 2 g^T H g; grad moves by eta H g.
    moved = loss - etas * (g @ g) + 0.5 * etas**2 * (g @ hessian @ g)
    np.testing.assert_allclose(scalars["landscape/loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(scalars["landscape/gradient_norm"], np.linalg.norm(g), rtol=1e-5)
    np.testing.assert_allclose(scalars["landscape/loss_range"], np.ptp(moved), rtol=1e-4)
    np.testing.assert_allclose(
        scalars["landscape/gradient_predictiveness"],
        etas.max() * np.linalg.norm(hessian @ g),
        rtol=1e-4,
    )
    np.testing.assert_allclose(
        scalars["landscape/beta_smoothness"],
        np.linalg.norm(hessian @ g) / np.linalg.norm(g),
        rtol=1e-4,
    )


@pytest.mark.parametrize("eigen", [0, 2, 4])
def test_along_an_eigenvector_beta_is_the_curvature_along_the_gradient(eigen):
    # theta = 0 and b = v: g = v, an eigenvector, so ||Hg||/||g|| = g^T H g / g^T g = lambda.
    hessian, basis = spd(2)
    direction = basis[:, eigen]
    scalars = probe(
        quadratic(jnp.asarray(hessian, jnp.float32), jnp.asarray(direction, jnp.float32)),
        as_params(np.zeros(5)),
        STEP_SIZES,
    )
    curvature = direction @ hessian @ direction / (direction @ direction)
    assert curvature == pytest.approx([0.5, 1.0, 2.0, 4.0, 9.0][eigen])
    np.testing.assert_allclose(scalars["landscape/beta_smoothness"], curvature, rtol=1e-4)


def block(**fields):
    return ml_collections.ConfigDict(
        {"enabled": True, "every": "5 steps", "step_sizes": (0.1,), **fields}
    )


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"enabled": 1}, r"landscape.enabled=1 must be true or false"),
        ({"step_sizes": ()}, r"landscape.step_sizes=\(\) must be one or more positive"),
        ({"step_sizes": (0.1, 0.0)}, r"landscape.step_sizes=\(0.1, 0.0\) must be one or more"),
        ({"every": "5 weeks"}, r"5 weeks"),
    ],
)
def test_a_bad_block_is_refused(fields, message):
    with pytest.raises(UsageError, match=message):
        check_landscape_config(block(**fields))

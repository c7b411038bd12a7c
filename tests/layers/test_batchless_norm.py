"""Batchless normalization: its output and auxiliary loss against NumPy, the gradients the
stop-gradients allow (hand-derived), the train step adding the loss, and batch size 1."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnresearch.layers import get_normalization
from bnresearch.models import build_model
from bnresearch.train.state import create_train_state
from bnresearch.train.steps import train_step
from tests.layers.normtest_utils import CONV_SHAPE, DENSE_SHAPE, random_input


def batchless_variables(norm, x, seed=1):
    variables = norm.init(jax.random.key(0), x, train=True)
    assert set(variables) == {"params"}  # no running state
    rng = np.random.default_rng(seed)
    channels = x.shape[-1]
    params = {
        "scale": rng.uniform(0.5, 2.0, channels),
        "bias": rng.normal(size=channels),
        "mu": rng.normal(size=channels) + 3.0,
        "log_sigma": rng.normal(size=channels) * 0.5,
    }
    return {"params": {key: value.astype(np.float32) for key, value in params.items()}}


def numpy_nll(x, mu, log_sigma):
    x = np.asarray(x, np.float64)
    return np.mean(log_sigma) + 0.5 * np.mean(((x - mu) / np.exp(log_sigma)) ** 2)


@pytest.mark.parametrize("shape", [CONV_SHAPE, DENSE_SHAPE, (1, 8)])
def test_output_and_auxiliary_loss_match_numpy(shape):
    norm = get_normalization("batchless")()
    x = random_input(shape)
    variables = batchless_variables(norm, x)
    p = variables["params"]
    expected = (x - p["mu"]) / np.exp(p["log_sigma"]) * p["scale"] + p["bias"]
    y, sown = norm.apply(variables, x, train=True, mutable=["aux_loss"])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    (aux,) = sown["aux_loss"]["gaussian_nll"]
    np.testing.assert_allclose(aux, numpy_nll(x, p["mu"], p["log_sigma"]), rtol=1e-5)
    # evaluation: the same output, nothing sown
    np.testing.assert_allclose(
        norm.apply(variables, x, train=False), expected, rtol=1e-5, atol=1e-5
    )


def test_gradients_reach_only_what_the_stop_gradients_allow():
    norm = get_normalization("batchless")()
    x = random_input(DENSE_SHAPE)
    variables = batchless_variables(norm, x)

    def outputs(params, x):
        y, sown = norm.apply({"params": params}, x, train=True, mutable=["aux_loss"])
        return jnp.sum(y), sown["aux_loss"]["gaussian_nll"][0]

    task_grads = jax.grad(lambda p: outputs(p, x)[0])(variables["params"])
    aux_grads = jax.grad(lambda p: outputs(p, x)[1])(variables["params"])
    # the task loss moves gamma and beta, not mu and sigma; the likelihood the reverse
    for name in ("mu", "log_sigma"):
        np.testing.assert_array_equal(task_grads[name], 0.0)
    for name in ("scale", "bias"):
        np.testing.assert_array_equal(aux_grads[name], 0.0)
    np.testing.assert_array_equal(jax.grad(lambda x: outputs(variables["params"], x)[1])(x), 0.0)
    # the likelihood's gradients, by hand: with s = sigma, C channels and n values per channel,
    # d/dmu = -mean_n(x - mu) / (C s^2), d/dlog s = (1 - mean_n((x - mu)^2) / s^2) / C
    p = {key: np.asarray(value, np.float64) for key, value in variables["params"].items()}
    sigma2 = np.exp(2 * p["log_sigma"])
    channels = x.shape[-1]
    np.testing.assert_allclose(
        aux_grads["mu"], -(x - p["mu"]).mean(0) / (channels * sigma2), rtol=1e-4
    )
    np.testing.assert_allclose(
        aux_grads["log_sigma"],
        (1 - ((x - p["mu"]) ** 2).mean(0) / sigma2) / channels,
        rtol=1e-4,
        atol=1e-6,
    )


def test_train_step_adds_every_layers_likelihood_to_the_objective():
    model = build_model("mlp", num_classes=3, hidden_sizes=(6, 5), norm="batchless")
    x = jnp.asarray(random_input((4, 2, 2, 1)))
    labels = jnp.asarray([0, 1, 2, 0])
    optimizer = optax.sgd(0.1)
    state = create_train_state(model, optimizer, jax.random.key(0), x)
    _, sown = model.apply({"params": state.params}, x, train=True, mutable=["aux_loss"])
    per_layer = {name: float(value["gaussian_nll"][0]) for name, value in sown["aux_loss"].items()}
    assert set(per_layer) == {"norm1", "norm2"}
    _, metrics = train_step(
        state,
        {"image": x, "label": labels},
        model=model,
        optimizer=optimizer,
        learning_rate_fn=lambda step: 0.1,
    )
    np.testing.assert_allclose(metrics["aux_loss"], sum(per_layer.values()), rtol=1e-5)

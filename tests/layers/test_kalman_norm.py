"""Batch Kalman normalization (BKN): the moment propagation against closed forms, the fusion
and its skip rule against NumPy, a two-layer model's fused statistics in training and its EMAs in
evaluation against a NumPy computation, and the per-call record that links the layers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import ndtr

from bnresearch.errors import UsageError
from bnresearch.layers import get_activation, get_normalization
from bnresearch.layers.kit import LayerKit
from bnresearch.layers.normalization.kalman import (
    gaussian_activation_moments,
    kalman_fuse,
    propagate_moments,
)
from bnresearch.layers.variables import STATE
from bnresearch.models import build_model
from tests.layers.normtest_utils import DENSE_SHAPE, init_with_random_affine, moments, random_input

EPS = 1e-5


def relu_moments(mean, var):
    """Mean and variance of relu(z), z ~ N(mean, var): the rectified Gaussian's closed form."""
    std = np.sqrt(var)
    a = mean / std
    pdf = np.exp(-(a**2) / 2) / np.sqrt(2 * np.pi)
    first = mean * ndtr(a) + std * pdf
    second = (mean**2 + var) * ndtr(a) + mean * std * pdf
    return first, second - first**2


def test_gauss_hermite_moments_match_closed_forms():
    mean = np.array([0.0, 0.5, -1.0, 2.0, 0.1], np.float32)
    var = np.array([1.0, 0.09, 0.25, 0.01, 4.0], np.float32)
    first, second = gaussian_activation_moments(jax.nn.relu, mean, var)
    expected_first, expected_var = relu_moments(mean.astype(np.float64), var.astype(np.float64))
    # ReLU's kink is the hard case for the rule: within 1% where the mean is not negligible
    np.testing.assert_allclose(first, expected_first, rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(second, expected_var, rtol=1e-2, atol=1e-3)
    identity = gaussian_activation_moments(lambda z: z, mean, var)
    np.testing.assert_allclose(identity[0], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(identity[1], var, rtol=1e-4)
    # a smooth activation: E[exp(z)] = exp(m + v / 2), Var = (exp(v) - 1) exp(2m + v)
    exp_moments = gaussian_activation_moments(jnp.exp, mean, var)
    np.testing.assert_allclose(exp_moments[0], np.exp(mean + var / 2), rtol=1e-4)
    np.testing.assert_allclose(
        exp_moments[1], (np.exp(var) - 1) * np.exp(2 * mean + var), rtol=1e-3
    )


def test_moments_through_a_kernel_add_over_taps_and_input_channels():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    mean, var = rng.normal(size=4).astype(np.float32), rng.uniform(0.1, 2, 4).astype(np.float32)
    out_mean, out_var = propagate_moments(mean, var, kernel, bias)
    k = kernel.astype(np.float64)
    np.testing.assert_allclose(out_mean, np.einsum("hwio,i->o", k, mean) + bias, rtol=1e-5)
    np.testing.assert_allclose(out_var, np.einsum("hwio,i->o", k**2, var), rtol=1e-5)


def test_fusion_and_its_skip_rule():
    rng = np.random.default_rng(1)
    pm, om = rng.normal(size=6).astype(np.float32), rng.normal(size=6).astype(np.float32)
    pv, ov = rng.uniform(0.5, 2, 6).astype(np.float32), rng.uniform(0.5, 2, 6).astype(np.float32)
    p = 0.9
    mean, var = kalman_fuse(pm, pv, om, ov, prediction_weight=p, max_variance_ratio=100.0)
    np.testing.assert_allclose(mean, p * pm + (1 - p) * om, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, p * pv + (1 - p) * ov + p * (1 - p) * (pm - om) ** 2, rtol=1e-5)
    # mean(var_pred / var_obs) >= 100: the observed moments alone
    mean, var = kalman_fuse(pm, 100 * ov, om, ov, prediction_weight=p, max_variance_ratio=100.0)
    np.testing.assert_array_equal(mean, om)
    np.testing.assert_array_equal(var, ov)


def numpy_bn(x, mean, var, scale, bias):
    return (x - mean) / np.sqrt(var + EPS) * scale + bias


def test_two_layer_model_fuses_the_second_layers_statistics():
    """dense1 -> BKN1 (plain BN: nothing before it) -> relu -> dense2 -> BKN2 (fused) -> relu
    -> head, against NumPy with ReLU's closed-form moments."""
    model = build_model("mlp", num_classes=3, hidden_sizes=(6, 5), norm="batch_kalman")
    x = random_input((16, 2, 2, 1))
    variables = model.init(jax.random.key(0), x, train=True)
    rng = np.random.default_rng(2)
    params = jax.tree.map(np.asarray, variables["params"])
    for norm in ("norm1", "norm2"):
        width = params[norm]["scale"].shape[0]
        params[norm] = {
            "scale": rng.uniform(0.5, 2, width).astype(np.float32),
            "bias": rng.normal(size=width).astype(np.float32),
        }
    variables = {"params": params, STATE: variables[STATE]}
    logits, updates = model.apply(variables, x, train=True, mutable=[STATE])

    h1 = x.reshape(16, -1).astype(np.float64) @ params["dense1"]["kernel"]
    mean1, var1 = moments(h1, (0,))
    a1 = np.maximum(numpy_bn(h1, mean1, var1, params["norm1"]["scale"], params["norm1"]["bias"]), 0)
    h2 = a1 @ params["dense2"]["kernel"]
    obs_mean, obs_var = moments(h2, (0,))
    # layer 1's output as the model of it: N(beta, gamma^2 var / (var + eps)) per channel
    act_mean, act_var = relu_moments(
        params["norm1"]["bias"].astype(np.float64),
        params["norm1"]["scale"] ** 2 * var1.ravel() / (var1.ravel() + EPS),
    )
    pred_mean = act_mean @ params["dense2"]["kernel"]
    pred_var = act_var @ params["dense2"]["kernel"] ** 2
    assert np.mean(pred_var / obs_var.ravel()) < 100  # so the layer fuses
    p = 0.9
    fused_mean = p * pred_mean + (1 - p) * obs_mean.ravel()
    fused_var = (
        p * pred_var + (1 - p) * obs_var.ravel() + p * (1 - p) * (pred_mean - obs_mean.ravel()) ** 2
    )
    a2 = np.maximum(
        numpy_bn(h2, fused_mean, fused_var, params["norm2"]["scale"], params["norm2"]["bias"]), 0
    )
    expected_logits = a2 @ params["head"]["kernel"] + params["head"]["bias"]
    np.testing.assert_allclose(logits, expected_logits, rtol=2e-2, atol=2e-2)

    stats = updates[STATE]
    # EMAs from (0, 1) with momentum 0.9 on the old value: layer 1 of its observed moments,
    # layer 2 of its fused ones
    np.testing.assert_allclose(stats["norm1"]["mean"], 0.1 * mean1.ravel(), rtol=1e-4)
    np.testing.assert_allclose(stats["norm1"]["var"], 0.9 + 0.1 * var1.ravel(), rtol=1e-4)
    np.testing.assert_allclose(stats["norm2"]["mean"], 0.1 * fused_mean, rtol=2e-2, atol=1e-3)
    np.testing.assert_allclose(stats["norm2"]["var"], 0.9 + 0.1 * fused_var, rtol=2e-2)
    assert not np.allclose(stats["norm2"]["mean"], 0.1 * obs_mean.ravel(), rtol=1e-3)

    # evaluation normalizes with the EMAs
    state = {"params": params, STATE: stats}
    eval_logits = model.apply(state, x, train=False)
    s = jax.tree.map(lambda v: np.asarray(v, np.float64), stats)
    a1 = np.maximum(
        numpy_bn(
            h1,
            s["norm1"]["mean"],
            s["norm1"]["var"],
            params["norm1"]["scale"],
            params["norm1"]["bias"],
        ),
        0,
    )
    a2 = np.maximum(
        numpy_bn(
            a1 @ params["dense2"]["kernel"],
            s["norm2"]["mean"],
            s["norm2"]["var"],
            params["norm2"]["scale"],
            params["norm2"]["bias"],
        ),
        0,
    )
    np.testing.assert_allclose(
        eval_logits, a2 @ params["head"]["kernel"] + params["head"]["bias"], rtol=1e-4, atol=1e-4
    )


def test_a_layer_without_a_predecessor_is_batch_norm():
    x = random_input(DENSE_SHAPE)
    kalman = get_normalization("batch_kalman")()
    batch = get_normalization("batch")()
    variables = init_with_random_affine(kalman, x)
    y, stats = kalman.apply(variables, x, train=True, mutable=[STATE])
    y_bn, stats_bn = batch.apply(variables, x, train=True, mutable=[STATE])
    np.testing.assert_allclose(y, y_bn, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats[STATE]["var"], stats_bn[STATE]["var"], rtol=1e-6)


def test_calls_do_not_share_their_record():
    """Each apply starts a fresh record: the same call twice gives the same result, and an
    evaluation call in between changes nothing."""
    model = build_model("mlp", num_classes=3, hidden_sizes=(6, 5), norm="batch_kalman")
    x = random_input((8, 2, 2, 1))
    variables = model.init(jax.random.key(0), x, train=True)
    first, _ = model.apply(variables, x, train=True, mutable=[STATE])
    model.apply(variables, x[:3] * 5, train=False)
    second, _ = model.apply(variables, x, train=True, mutable=[STATE])
    np.testing.assert_array_equal(first, second)


class ScaledRelu(nn.Module):
    @nn.compact
    def __call__(self, x):
        return jax.nn.relu(x) * self.param("slope", nn.initializers.ones, ())


def test_activations_with_parameters_and_replaced_weight_layers_are_refused():
    norm = get_normalization("batch_kalman")
    kit = LayerKit(norm_factory=norm, activation_factory=ScaledRelu)
    with pytest.raises(UsageError, match="activation, which must have no parameters"):
        norm(parent=None).adapt_kit(kit)
    kit = LayerKit(
        norm_factory=norm,
        activation_factory=get_activation("relu"),
        conv_factory=lambda *args, **kwargs: None,
    )
    with pytest.raises(UsageError, match="brings its own conv and dense layers"):
        norm(parent=None).adapt_kit(kit)

"""The train step's objective against hand computations: label smoothing, sown auxiliary losses
and analysis scalars."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnresearch.layers.variables import ANALYSIS, AUX_LOSS
from bnresearch.train.state import create_train_state
from bnresearch.train.steps import cross_entropy, train_step

LR = 0.5


class SowingLinear(nn.Module):
    """Logits x @ w; sows sum(w^2) as an auxiliary loss from two layers and a scalar to log."""

    @nn.compact
    def __call__(self, x, train):
        w = self.param("w", nn.initializers.normal(1.0), (x.shape[-1], 3))
        for name in ("first", "second"):
            self.sow(AUX_LOSS, name, jnp.sum(w ** 2))
        self.sow(ANALYSIS, "mean_input", jnp.mean(x))
        return x @ w


def numpy_cross_entropy(logits, labels, eps):
    logits = np.asarray(logits, np.float64)
    k = logits.shape[-1]
    targets = (1 - eps) * np.eye(k)[labels] + eps / k
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -(targets * log_probs).sum(-1)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_with_label_smoothing(eps):
    logits = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    labels = np.array([0, 3, 1, 1, 2])
    np.testing.assert_allclose(cross_entropy(jnp.asarray(logits), jnp.asarray(labels), eps),
                               numpy_cross_entropy(logits, labels, eps), rtol=1e-5)


def test_aux_losses_join_the_objective_and_analysis_scalars_are_logged():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 2)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2])
    model = SowingLinear()
    state = create_train_state(model, optax.sgd(LR), jax.random.key(0), jnp.asarray(x))
    w = np.asarray(state.params["w"], np.float64)
    new_state, metrics = train_step(state, {"image": x, "label": labels}, model=model,
                                    optimizer=optax.sgd(LR), learning_rate_fn=lambda s: LR,
                                    label_smoothing=0.1)
    # d/dw of mean CE(x w) + 2 sum(w^2), by hand
    logits = x @ w
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    targets = 0.9 * np.eye(3)[labels] + 0.1 / 3
    grad = x.T @ (probs - targets) / len(x) + 4 * w
    np.testing.assert_allclose(new_state.params["w"], w - LR * grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"], numpy_cross_entropy(logits, labels, 0.1).mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(metrics["aux_loss"], 2 * np.sum(w ** 2), rtol=1e-5)
    np.testing.assert_allclose(metrics["mean_input"], x.mean(), rtol=1e-5)

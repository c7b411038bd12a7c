"""The train step against hand computations: label smoothing, sown auxiliary losses, analysis
scalars, and gradient accumulation against one step on the whole batch."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bnresearch.config.defaults import base_config
from bnresearch.layers.variables import ANALYSIS, AUX_LOSS
from bnresearch.models import build_model
from bnresearch.optim.optimizers import make_optimizer
from bnresearch.train.state import create_train_state
from bnresearch.train.steps import cross_entropy, label_targets, train_step

LR = 0.5


class SowingLinear(nn.Module):
    """Logits x @ w; sows sum(w^2) as an auxiliary loss from two layers and a scalar to log."""

    @nn.compact
    def __call__(self, x, train):
        w = self.param("w", nn.initializers.normal(1.0), (x.shape[-1], 3))
        for name in ("first", "second"):
            self.sow(AUX_LOSS, name, jnp.sum(w**2))
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
    np.testing.assert_allclose(
        cross_entropy(
            jnp.asarray(logits), label_targets({"label": labels}, jnp.asarray(logits)), eps
        ),
        numpy_cross_entropy(logits, labels, eps),
        rtol=1e-5,
    )


def test_aux_losses_join_the_objective_and_analysis_scalars_are_logged():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 2)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2])
    model = SowingLinear()
    state = create_train_state(model, optax.sgd(LR), jax.random.key(0), jnp.asarray(x))
    w = np.asarray(state.params["w"], np.float64)
    new_state, metrics = train_step(
        state,
        {"image": x, "label": labels},
        model=model,
        optimizer=optax.sgd(LR),
        learning_rate_fn=lambda s: LR,
        label_smoothing=0.1,
    )
    # d/dw of mean CE(x w) + 2 sum(w^2), by hand
    logits = x @ w
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    targets = 0.9 * np.eye(3)[labels] + 0.1 / 3
    grad = x.T @ (probs - targets) / len(x) + 4 * w
    np.testing.assert_allclose(new_state.params["w"], w - LR * grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        metrics["loss"], numpy_cross_entropy(logits, labels, 0.1).mean(), rtol=1e-5
    )
    np.testing.assert_allclose(metrics["aux_loss"], 2 * np.sum(w**2), rtol=1e-5)
    np.testing.assert_allclose(metrics["mean_input"], x.mean(), rtol=1e-5)


def test_a_mixed_batch_trains_on_its_mixed_targets_and_scores_the_weighted_hit_rate():
    # Targets w onehot(label) + (1 - w) onehot(mix_label), then smoothed; accuracy
    # w [top = label] + (1 - w) [top = mix_label]: by hand, in float64.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 2)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2], np.int32)
    mix_labels = np.array([1, 1, 0, 2, 0, 2], np.int32)
    weights = np.array([0.3, 0.9, 0.5, 1.0, 0.0, 0.7], np.float32)
    model = SowingLinear()
    state = create_train_state(model, optax.sgd(LR), jax.random.key(0), jnp.asarray(x))
    w = np.asarray(state.params["w"], np.float64)
    batch = {"image": x, "label": labels, "mix_label": mix_labels, "mix_weight": weights}
    new_state, metrics = train_step(
        state,
        batch,
        model=model,
        optimizer=optax.sgd(LR),
        learning_rate_fn=lambda s: LR,
        label_smoothing=0.1,
    )
    logits = x @ w
    mixed = weights[:, None] * np.eye(3)[labels] + (1 - weights[:, None]) * np.eye(3)[mix_labels]
    smoothed = 0.9 * mixed + 0.1 / 3
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    grad = x.T @ (probs - smoothed) / len(x) + 4 * w
    np.testing.assert_allclose(new_state.params["w"], w - LR * grad, rtol=1e-5, atol=1e-6)
    loss = -(smoothed * np.log(probs)).sum(-1).mean()
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    top = logits.argmax(-1)
    hits = weights * (top == labels) + (1 - weights) * (top == mix_labels)
    assert 0 < hits.mean() < 1
    np.testing.assert_allclose(metrics["accuracy"], hits.mean(), rtol=1e-6)


def test_a_batch_mixed_with_itself_at_weight_one_is_the_plain_batch():
    batch = random_batches(1, 6)[0]
    model = tiny_cnn("batch")
    mixed = {**batch, "mix_label": (batch["label"] + 1) % 3, "mix_weight": np.ones(6, np.float32)}
    plain, _ = run_updates(model, [batch], accumulation_steps=1)
    weighted, _ = run_updates(model, [mixed], accumulation_steps=1)
    jax.tree.map(np.testing.assert_array_equal, plain.params, weighted.params)


def tiny_cnn(norm):
    return build_model("cnn", num_classes=3, norm=norm, widths=(4, 8), convs_per_stage=1)


def random_batches(count, size, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "image": rng.normal(size=(size, 8, 8, 1)).astype(np.float32),
            "label": rng.integers(0, 3, size=size).astype(np.int32),
        }
        for _ in range(count)
    ]


def run_updates(model, batches, accumulation_steps):
    """Applies the batches one train-step call each with k = accumulation_steps; returns the
    final state and the (step, lr) seen after every call."""
    config = base_config().optimizer
    config.update(name="momentum", weight_decay=0.01, accumulation_steps=accumulation_steps)
    schedule = lambda step: 0.1 / (1.0 + step)  # changes every update: a stale count would show
    optimizer = make_optimizer(config, schedule)
    state = create_train_state(
        model, optimizer, jax.random.key(0), jnp.asarray(batches[0]["image"])
    )
    step = jax.jit(
        functools.partial(train_step, model=model, optimizer=optimizer, learning_rate_fn=schedule)
    )
    seen = []
    for batch in batches:
        state, metrics = step(state, batch)
        seen.append((int(state.step), float(metrics["lr"])))
    return state, seen


@pytest.mark.parametrize("norm", ["none", "layer"])
def test_k_micro_batches_make_the_update_of_one_k_times_larger_batch(norm):
    # Two updates of 3 micro-batches of 4 against two updates of the 12 examples together.
    model, k = tiny_cnn(norm), 3
    micro = random_batches(2 * k, 4)
    joined = [
        {key: np.concatenate([b[key] for b in micro[i * k : (i + 1) * k]]) for key in micro[0]}
        for i in range(2)
    ]
    accumulated, seen = run_updates(model, micro, accumulation_steps=k)
    whole, seen_whole = run_updates(model, joined, accumulation_steps=1)
    jax.tree.map(
        functools.partial(np.testing.assert_allclose, rtol=2e-5, atol=1e-7),
        accumulated.params,
        whole.params,
    )
    # The step counts updates, not calls; each call reports the lr of its update.
    assert [s for s, _ in seen] == [0, 0, 1, 1, 1, 2]
    np.testing.assert_allclose([lr for _, lr in seen], [0.1] * 3 + [0.05] * 3, rtol=1e-6)
    assert [s for s, _ in seen_whole] == [1, 2]


def test_parameters_change_only_on_the_kth_call():
    state, _ = run_updates(tiny_cnn("none"), random_batches(1, 4), accumulation_steps=2)
    fresh, _ = run_updates(tiny_cnn("none"), random_batches(1, 4), accumulation_steps=1)
    initial = create_train_state(
        tiny_cnn("none"),
        optax.sgd(0.1),
        jax.random.key(0),
        jnp.asarray(random_batches(1, 4)[0]["image"]),
    )
    jax.tree.map(np.testing.assert_array_equal, state.params, initial.params)
    assert not np.allclose(fresh.params["head"]["kernel"], initial.params["head"]["kernel"])

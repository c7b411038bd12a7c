"""The pure train, eval and measurement steps. `loop.py` compiles them with explicit shardings."""

import functools

import jax
import jax.numpy as jnp
import optax

from bnresearch.layers.variables import (
    ACTIVATIONS,
    ANALYSIS,
    AUX_LOSS,
    RNG_STREAM,
    STATE,
    TRAIN_MUTABLE,
)
from bnresearch.measure import activations, covariate_shift, landscape, noise_scale
from bnresearch.optim.accumulation import completed_update, micro_step
from bnresearch.train.canonical_convolutions import canonical_convolutions
from bnresearch.train.state import TrainState


def label_targets(batch: dict, logits: jax.Array) -> jax.Array:
    """The target distributions of a batch's examples, in the logits' classes and dtype:
    onehot(label), or for a batch that mixup or CutMix mixed (it holds 'mix_weight') the same
    mix as its images, w onehot(label) + (1 - w) onehot(mix_label) (Zhang et al. 2017)."""
    one_hot = functools.partial(jax.nn.one_hot, num_classes=logits.shape[-1], dtype=logits.dtype)
    if "mix_weight" not in batch:
        return one_hot(batch["label"])
    weight = batch["mix_weight"][:, None].astype(logits.dtype)
    return weight * one_hot(batch["label"]) + (1 - weight) * one_hot(batch["mix_label"])


def cross_entropy(
    logits: jax.Array, targets: jax.Array, label_smoothing: float | jax.Array
) -> jax.Array:
    """Per-example cross-entropy against target distributions smoothed to (1 - eps) targets +
    eps/K (Szegedy et al. 2016, arXiv:1512.00567); eps = 0 is the plain loss. An array eps (a
    population member's own) always smooths: eps = 0 leaves the targets exactly as they are."""
    if isinstance(label_smoothing, jax.Array) or label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def accuracy(logits: jax.Array, batch: dict) -> jax.Array:
    """The fraction of examples whose top class is their label; for a mixed batch the weighted
    hit rate w [top = label] + (1 - w) [top = mix_label], the expected accuracy against a label
    drawn from each example's targets. Agreement with 'label' alone would count the partner's
    class, which the targets also reward, as a miss."""
    predicted = jnp.argmax(logits, -1)
    hits = predicted == batch["label"]
    if "mix_weight" in batch:
        weight = batch["mix_weight"]
        hits = weight * hits + (1 - weight) * (predicted == batch["mix_label"])
    return jnp.mean(hits)


def _sown_scalars(collection) -> dict[str, list[jax.Array]]:
    """Sown values grouped by their name (the last key of their path), over all layers."""
    grouped = {}
    for path, value in jax.tree_util.tree_leaves_with_path(collection):
        name = next(key.key for key in reversed(path) if isinstance(key, jax.tree_util.DictKey))
        grouped.setdefault(name, []).append(value)
    return grouped


def objective(params, batch_stats, batch: dict, rng, *, model, label_smoothing: float, collect=()):
    """The training objective on `batch`: mean cross-entropy plus the auxiliary losses layers
    sow; returns it with (cross-entropy, auxiliary loss, logits, sown collections). `collect`:
    collections sown besides the training ones (the measurements'; none in training)."""
    logits, sown = model.apply(
        {"params": params, STATE: batch_stats},
        batch["image"],
        train=True,
        mutable=TRAIN_MUTABLE + tuple(collect),
        rngs={RNG_STREAM: rng},
    )
    data_loss = cross_entropy(logits, label_targets(batch, logits), label_smoothing).mean()
    aux_loss = sum(jax.tree.leaves(sown.get(AUX_LOSS, {})), jnp.zeros((), jnp.float32))
    return data_loss + aux_loss, (data_loss, aux_loss, logits, sown)


def _step_rng(state: TrainState) -> jax.Array:
    """The key of this call: (seed, update), and the micro-batch when gradients accumulate."""
    rng = jax.random.fold_in(state.rng, state.step)
    micro = micro_step(state.opt_state)
    return rng if micro is None else jax.random.fold_in(rng, micro)


def train_step(
    state: TrainState,
    batch: dict,
    *,
    model,
    optimizer,
    learning_rate_fn,
    label_smoothing: float = 0.0,
):
    """One SGD step on a (globally sharded) batch; returns the new state and scalar metrics.

    The objective is the mean cross-entropy plus the auxiliary losses layers sow; ``loss`` in
    the metrics is the cross-entropy alone (comparable across models), ``aux_loss`` the rest.
    With gradient accumulation this is one micro-batch: the parameters and ``state.step`` change
    on every k-th call only (``bnresearch.optim.accumulation``).
    """
    loss_fn = _step_objective(state, batch, model=model, label_smoothing=label_smoothing)
    grads, (data_loss, aux_loss, logits, sown) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + jnp.asarray(completed_update(opt_state), jnp.int32),
        params=optax.apply_updates(state.params, updates),
        batch_stats=sown.get(STATE, state.batch_stats),
        opt_state=opt_state,
    )
    metrics = {
        "loss": data_loss,
        "accuracy": accuracy(logits, batch),
        # The optimizer's step count equals state.step (both count updates), so this is the lr
        # it applies with this batch's gradient.
        "lr": learning_rate_fn(state.step),
    }
    if jax.tree.leaves(sown.get(AUX_LOSS, {})):
        metrics["aux_loss"] = aux_loss
    for name, values in _sown_scalars(sown.get(ANALYSIS, {})).items():
        metrics[name] = jnp.mean(jnp.stack([jnp.asarray(v, jnp.float32) for v in values]))
    return new_state, metrics


def train_steps(state: TrainState, batches: dict, *, train_step):
    """`train_step` on each of `batches` (stacked along a leading axis) in turn, in one compiled
    program: a scan. Returns the last state and every call's metrics, stacked in order."""
    return jax.lax.scan(train_step, state, batches)


def noise_scale_step(
    state: TrainState,
    batch: dict,
    *,
    model,
    sub_batches: int,
    ema_decay: float,
    label_smoothing: float = 0.0,
):
    """Measures the gradient noise scale on `batch` at the current parameters.

    Returns the updated noise-scale EMAs (the rest of the state is untouched, so measuring does
    not alter training) and the scalars to log. See ``bnresearch.measure.noise_scale`` for what
    the sub-batch gradients are, batch norm included.
    """

    def gradient(sub_batch, rng):
        loss_fn = functools.partial(
            objective,
            batch_stats=state.batch_stats,
            batch=sub_batch,
            rng=rng,
            model=model,
            label_smoothing=label_smoothing,
        )
        return jax.grad(lambda params: loss_fn(params)[0])(state.params)

    small_sq, big_sq = noise_scale.sub_batch_gradient_norms(
        gradient, batch, sub_batches, _step_rng(state)
    )
    big_batch = batch["label"].shape[0]
    gradient_sq, trace = noise_scale.estimate(small_sq, big_sq, big_batch // sub_batches, big_batch)
    measured = noise_scale.update(state.noise_scale, gradient_sq, trace, ema_decay)
    return measured, noise_scale.summary(measured, ema_decay)


def _step_objective(state: TrainState, batch: dict, *, model, label_smoothing: float):
    """params -> the objective (with its aux) on `batch` as this step's train step sees it: the
    same normalization state and random draws, so a measurement probes the loss trained on."""
    return functools.partial(
        objective,
        batch_stats=state.batch_stats,
        batch=batch,
        rng=_step_rng(state),
        model=model,
        label_smoothing=label_smoothing,
    )


def landscape_step(
    state: TrainState,
    batch: dict,
    *,
    model,
    step_sizes: tuple,
    label_smoothing: float = 0.0,
    on_cpu: bool = False,
):
    """The loss-landscape probes at the current parameters on `batch`
    (``bnresearch.measure.landscape``); scalars only, the state is untouched. `on_cpu`: the
    probed points are visited in a loop, where XLA's CPU backend runs convolutions in JAX's
    order slowly unless brought to its own (``canonical_convolutions.py``)."""
    loss_fn = _step_objective(state, batch, model=model, label_smoothing=label_smoothing)
    loss_and_gradient = jax.value_and_grad(lambda params: loss_fn(params)[0])
    if on_cpu:
        loss_and_gradient = canonical_convolutions(loss_and_gradient)
    return landscape.probe(loss_and_gradient, state.params, step_sizes)


def covariate_shift_step(
    state: TrainState,
    batch: dict,
    *,
    model,
    optimizer,
    layers: tuple[str, ...],
    label_smoothing: float = 0.0,
    on_cpu: bool = False,
):
    """The internal covariate shift of each layer (``bnresearch.measure.covariate_shift``) for
    the update the train step is about to make with `batch`: the optimizer's own update from
    the current optimizer state, computed here and discarded. `on_cpu`: as for
    `landscape_step` (the shifted gradients are computed in a loop)."""
    loss_fn = _step_objective(state, batch, model=model, label_smoothing=label_smoothing)
    gradient_fn = jax.grad(lambda params: loss_fn(params)[0])
    if on_cpu:
        gradient_fn = canonical_convolutions(gradient_fn)
    updates, _ = optimizer.update(gradient_fn(state.params), state.opt_state, state.params)
    updated = optax.apply_updates(state.params, updates)
    distances, cosines = covariate_shift.shift(gradient_fn, state.params, updated, layers)
    return covariate_shift.summary(layers, distances, cosines)


def activation_stats_step(
    state: TrainState,
    batch: dict,
    *,
    model,
    label_smoothing: float = 0.0,
    histogram_buckets: int = 0,
):
    """Each normalization site's input and output statistics (and histograms) in the train
    step's forward on `batch` (``bnresearch.measure.activations``)."""
    loss_fn = _step_objective(state, batch, model=model, label_smoothing=label_smoothing)
    *_, sown = loss_fn(state.params, collect=(ACTIVATIONS,))[1]
    return activations.summary(sown.get(ACTIVATIONS, {}), histogram_buckets)


# Top-5 is the papers' second number on CIFAR-100 and ImageNet; with 10 classes or fewer it says
# little (half the classes), so it is not computed.
TOP5_MIN_CLASSES = 11


def eval_step(state: TrainState, batch: dict, *, model):
    """Sums of loss, correct predictions and, with TOP5_MIN_CLASSES classes or more, top-5 hits
    over the real (mask 1) examples of a padded batch."""
    logits = model.apply(
        {"params": state.params, STATE: state.batch_stats}, batch["image"], train=False
    )
    losses = cross_entropy(logits, label_targets(batch, logits), label_smoothing=0.0)
    correct = jnp.argmax(logits, -1) == batch["label"]
    mask = batch["mask"]
    sums = {
        "loss_sum": jnp.sum(losses * mask),
        "correct_sum": jnp.sum(correct * mask),
        "count": jnp.sum(mask),
    }
    # Decided from the static class count, so a 10-class run compiles the program it always did.
    if logits.shape[-1] >= TOP5_MIN_CLASSES:
        sums["top5_sum"] = jnp.sum(top_k_correct(logits, batch["label"], 5) * mask)
    return sums


def top_k_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Whether each label is among the k highest logits. Ties rank as argmax breaks them, lower
    class first, so k = 1 is exactly argmax == label: the label's rank is the number of classes
    with a higher logit plus those of lower index with an equal one."""
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    lower_index = jnp.arange(logits.shape[-1]) < labels[:, None]
    ahead = (logits > label_logit) | ((logits == label_logit) & lower_index)
    return jnp.sum(ahead, axis=-1) < k

"""The pure train and eval steps. `loop.py` compiles them with explicit shardings."""
import jax
import jax.numpy as jnp
import optax

from bnresearch.train.state import TrainState


def _variables(params, batch_stats):
    return {"params": params, "batch_stats": batch_stats}


def train_step(state: TrainState, batch: dict, *, model, optimizer, learning_rate_fn):
    """One SGD step on a (globally sharded) batch; returns the new state and scalar metrics."""
    step_rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        logits, new_model_state = model.apply(
            _variables(params, state.batch_stats), batch["image"], train=True,
            mutable=["batch_stats"], rngs={"dropout": step_rng})
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, (logits, new_model_state)

    (loss, (logits, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=new_model_state.get("batch_stats", state.batch_stats),
        opt_state=opt_state,
    )
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
        # The optimizer's step count equals state.step, so this is the lr it just applied.
        "lr": learning_rate_fn(state.step),
    }
    return new_state, metrics


def eval_step(state: TrainState, batch: dict, *, model):
    """Sums of loss and correct predictions over the real (mask 1) examples of a padded batch."""
    logits = model.apply(_variables(state.params, state.batch_stats), batch["image"], train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    correct = jnp.argmax(logits, -1) == batch["label"]
    mask = batch["mask"]
    return {
        "loss_sum": jnp.sum(losses * mask),
        "correct_sum": jnp.sum(correct * mask),
        "count": jnp.sum(mask),
    }

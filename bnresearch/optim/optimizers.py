"""Optimizers by name, built from optax with weight decay and gradient clipping."""
import ml_collections
import optax

from bnresearch.optim.schedules import Schedule
from bnresearch.errors import UsageError


def _sgd(config, learning_rate):
    return optax.sgd(learning_rate)


def _momentum(config, learning_rate):
    # optax's trace is v <- g + mu v; update -lr v (the PyTorch convention, dampening 0).
    return optax.sgd(learning_rate, momentum=config.momentum)


def _nesterov(config, learning_rate):
    return optax.sgd(learning_rate, momentum=config.momentum, nesterov=True)


def _adam(config, learning_rate):
    return optax.adam(learning_rate, b1=config.b1, b2=config.b2, eps=config.eps)


def _adamw(config, learning_rate):
    # Decoupled decay (Loshchilov & Hutter 2019), scaled by the scheduled lr as in optax/PyTorch.
    return optax.adamw(learning_rate, b1=config.b1, b2=config.b2, eps=config.eps,
                       weight_decay=config.weight_decay)


OPTIMIZERS = {
    "sgd": _sgd,
    "momentum": _momentum,
    "nesterov": _nesterov,
    "adam": _adam,
    "adamw": _adamw,
}
DECOUPLED_DECAY = frozenset({"adamw"})


def check_optimizer_name(name: str) -> None:
    if name not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer.name {name!r}; valid: {', '.join(OPTIMIZERS)}")


def make_optimizer(config: ml_collections.ConfigDict,
                   learning_rate: Schedule) -> optax.GradientTransformation:
    """Clip the raw gradient, add coupled L2 decay (except for decoupled optimizers), then step.

    `config` is the `optimizer` block: name, momentum, b1, b2, eps, weight_decay, grad_clip_norm
    (0 turns clipping off).
    """
    check_optimizer_name(config.name)
    transforms = []
    if config.grad_clip_norm > 0:
        transforms.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.weight_decay > 0 and config.name not in DECOUPLED_DECAY:
        transforms.append(optax.add_decayed_weights(config.weight_decay))
    transforms.append(OPTIMIZERS[config.name](config, learning_rate))
    return optax.chain(*transforms)

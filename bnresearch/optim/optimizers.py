"""Optimizers by name, built from optax with weight decay, gradient clipping and per-group
learning rates (see ``groups``)."""
import ml_collections
import optax

from bnresearch.optim.constraints import clip_latent_weights
from bnresearch.optim.groups import GROUPS, WEIGHT_DECAY_TARGETS, decay_mask, scale_by_group
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
                       weight_decay=config.weight_decay, mask=decay_mask(config.weight_decay_on))


OPTIMIZERS = {
    "sgd": _sgd,
    "momentum": _momentum,
    "nesterov": _nesterov,
    "adam": _adam,
    "adamw": _adamw,
}
DECOUPLED_DECAY = frozenset({"adamw"})


def check_optimizer_config(config: ml_collections.ConfigDict) -> None:
    """Raises UsageError for an unknown name, decay target or parameter group."""
    if config.name not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer.name {config.name!r}; valid: {', '.join(OPTIMIZERS)}")
    if config.weight_decay_on not in WEIGHT_DECAY_TARGETS:
        raise UsageError(f"unknown optimizer.weight_decay_on {config.weight_decay_on!r}; valid: "
                         f"{', '.join(WEIGHT_DECAY_TARGETS)}")
    unknown = sorted(set(config.lr_multipliers) - set(GROUPS))
    if unknown:
        raise UsageError(f"unknown optimizer.lr_multipliers group(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(GROUPS)}")


def make_optimizer(config: ml_collections.ConfigDict,
                   learning_rate: Schedule) -> optax.GradientTransformation:
    """Clip the raw gradient, add coupled L2 decay (except for decoupled optimizers), step, then
    scale each parameter group's step by its lr multiplier; last, clip the latent weights of
    quantized layers to [-1, 1] (a no-op for models without them; see ``constraints``).

    `config` is the `optimizer` block: name, momentum, b1, b2, eps, weight_decay,
    weight_decay_on (all | kernels), lr_multipliers (per group), grad_clip_norm (0: off).
    """
    check_optimizer_config(config)
    transforms = []
    if config.grad_clip_norm > 0:
        transforms.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.weight_decay > 0 and config.name not in DECOUPLED_DECAY:
        transforms.append(optax.add_decayed_weights(config.weight_decay,
                                                    mask=decay_mask(config.weight_decay_on)))
    transforms.append(OPTIMIZERS[config.name](config, learning_rate))
    multipliers = {group: config.lr_multipliers.get(group, 1.0) for group in GROUPS}
    if any(multiplier != 1.0 for multiplier in multipliers.values()):
        transforms.append(scale_by_group(multipliers))
    transforms.append(clip_latent_weights())
    return optax.chain(*transforms)

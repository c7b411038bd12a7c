"""Optimizers by name, assembled from optax transformations in one fixed order.

Every optimizer is the chain

    clip -> coupled decay -> direction -> decoupled decay -> trust ratio -> x lr -> after lr
         -> per-group lr multipliers -> body / head lr multipliers

on the trained parameters when fine-tuning freezes some (``freezing``: optax's partitioned
transform, zero updates and no state for the frozen ones), wrapped in ``optax.MultiSteps`` when
gradients are accumulated (``accumulation``). A row of OPTIMIZERS fills the direction, trust-ratio
and after-lr slots; everything else is shared, so weight decay, its mask, clipping, per-group
learning rates and accumulation mean the same for every optimizer. The rows reproduce optax's own
aliases (optax.sgd, adagrad, rmsprop, adam, adamw, lars, lamb) transformation for transformation.

Weight decay, ``optimizer.weight_decay_style``:
- coupled (L2): wd * w is added to the gradient, so it passes through momentum, adaptive scaling
  and the trust ratio (PyTorch's ``weight_decay`` argument of SGD, Adagrad, RMSprop, Adam).
- decoupled: wd * w is added to the optimizer's direction, after momentum and adaptive scaling,
  and is multiplied by the scheduled lr with the rest of the step, as optax and PyTorch implement
  AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019,
  arXiv:1711.05101). For plain sgd the two are the same update.
- auto: the optimizer's own convention, the first style of its row: decoupled for adamw and for
  lamb (LAMB's decay enters the trust ratio on top of the Adam direction), coupled for the rest
  (LARS's decay enters the trust ratio on top of the gradient).
adamw is adam with decoupled decay, so it has no coupled style (that is ``adam``); lars is defined
with the decay inside its gradient's trust ratio, so it has no decoupled style.

Trust ratios (lars, lamb): each array's step is scaled by ||w|| / ||step|| (lars: times
``trust_coefficient``); ``optimizer.trust_ratio_on=kernels`` leaves normalization parameters and
biases with a plain lr step, as You et al. do. ``optimizer.weight_decay_on`` and ``trust_ratio_on``
use the same parameter groups (``groups``).

References: momentum: Polyak 1964; Nesterov: Sutskever et al., ICML 2013. AdaGrad: Duchi, Hazan &
Singer, JMLR 2011. RMSProp: Tieleman & Hinton, Coursera lecture 6.5, 2012. Adam: Kingma & Ba,
arXiv:1412.6980. LARS: You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks",
2017, arXiv:1708.03888. LAMB: You et al., "Large Batch Optimization for Deep Learning: Training
BERT in 76 minutes", ICLR 2020, arXiv:1904.00962.
"""

import dataclasses
from typing import Callable

import ml_collections
import optax

from bnresearch.config.ranges import check_ranges
from bnresearch.errors import UsageError
from bnresearch.optim.accumulation import accumulate
from bnresearch.optim.constraints import clip_latent_weights
from bnresearch.optim.freezing import Partition
from bnresearch.optim.groups import GROUPS, TARGETS, scale_by_group, target_mask
from bnresearch.optim.schedules import Schedule

Transforms = Callable[[ml_collections.ConfigDict], list[optax.GradientTransformation]]
COUPLED_FIRST = ("coupled", "decoupled")


def _nothing(config):
    del config
    return []


def _momentum(config):
    # optax's trace is v <- g + mu v; the step is -lr v (PyTorch's convention, dampening 0).
    return [optax.trace(decay=config.momentum)]


def _nesterov(config):
    return [optax.trace(decay=config.momentum, nesterov=True)]


def _adagrad(config):
    # G <- G + g^2, step g / sqrt(G + eps); G starts at initial_accumulator.
    return [
        optax.scale_by_rss(initial_accumulator_value=config.initial_accumulator, eps=config.eps)
    ]


def _rmsprop(config):
    # nu <- rho nu + (1 - rho) g^2, step g / sqrt(nu + eps) (eps inside the root, optax's
    # default; PyTorch adds it outside); nu starts at initial_accumulator.
    return [
        optax.scale_by_rms(
            decay=config.rho, eps=config.eps, initial_scale=config.initial_accumulator
        )
    ]


def _adam(config):
    return [optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps)]


def _lars_trust_ratio(config):
    return optax.scale_by_trust_ratio(trust_coefficient=config.trust_coefficient)


def _lamb_trust_ratio(config):
    del config  # LAMB's ratio is ||w|| / ||r + wd w|| with no coefficient
    return optax.scale_by_trust_ratio()


@dataclasses.dataclass(frozen=True)
class OptimizerRule:
    """One optimizer: what it adds to the shared chain (see the module docstring)."""

    direction: Transforms  # gradient -> direction, before the lr (momentum, moments, ...)
    decay_styles: tuple[str, ...]  # the weight-decay styles it has; the first is its own
    trust_ratio: Callable[[ml_collections.ConfigDict], optax.GradientTransformation] | None = None
    # LARS keeps its momentum on lr-scaled steps (optax.lars, You et al.'s Algorithm 1).
    after_lr: Transforms = _nothing


OPTIMIZERS = {
    "sgd": OptimizerRule(_nothing, COUPLED_FIRST),
    "momentum": OptimizerRule(_momentum, COUPLED_FIRST),
    "nesterov": OptimizerRule(_nesterov, COUPLED_FIRST),
    "adagrad": OptimizerRule(_adagrad, COUPLED_FIRST),
    "rmsprop": OptimizerRule(_rmsprop, COUPLED_FIRST),
    "adam": OptimizerRule(_adam, COUPLED_FIRST),
    "adamw": OptimizerRule(_adam, ("decoupled",)),
    "lars": OptimizerRule(
        _nothing, ("coupled",), trust_ratio=_lars_trust_ratio, after_lr=_momentum
    ),
    "lamb": OptimizerRule(_adam, ("decoupled", "coupled"), trust_ratio=_lamb_trust_ratio),
}
WEIGHT_DECAY_STYLES = ("auto",) + COUPLED_FIRST


def _check_choice(field: str, value, valid) -> None:
    if value not in valid:
        raise UsageError(f"unknown optimizer.{field} {value!r}; valid: {', '.join(valid)}")


def weight_decay_style(config: ml_collections.ConfigDict) -> str:
    """The weight-decay style `config` asks for, with `auto` resolved for its optimizer."""
    styles = OPTIMIZERS[config.name].decay_styles
    if config.weight_decay_style == "auto":
        return styles[0]
    if config.weight_decay_style not in styles:
        raise UsageError(
            f"optimizer.weight_decay_style={config.weight_decay_style!r} does not apply to "
            f"{config.name}; valid for {config.name}: auto, {', '.join(styles)}"
        )
    return config.weight_decay_style


def check_optimizer_config(config: ml_collections.ConfigDict) -> None:
    """Raises UsageError for an unknown name, style, target or group, or a number out of its
    range (``bnresearch/config/ranges.py``)."""
    _check_choice("name", config.name, tuple(OPTIMIZERS))
    _check_choice("weight_decay_style", config.weight_decay_style, WEIGHT_DECAY_STYLES)
    _check_choice("weight_decay_on", config.weight_decay_on, TARGETS)
    _check_choice("trust_ratio_on", config.trust_ratio_on, TARGETS)
    weight_decay_style(config)
    unknown = sorted(set(config.lr_multipliers) - set(GROUPS))
    if unknown:
        raise UsageError(
            f"unknown optimizer.lr_multipliers group(s) {', '.join(unknown)}; "
            f"valid: {', '.join(GROUPS)}"
        )
    check_ranges(config, "optimizer")


def make_optimizer(
    config: ml_collections.ConfigDict, learning_rate: Schedule, partition: Partition | None = None
) -> optax.GradientTransformation:
    """The optimizer of the `optimizer` config block, stepping with the `learning_rate` schedule;
    with `partition`, on its trained parameters only, body and head at their lr multipliers.
    Last in the chain, the latent weights of quantized layers are clipped to [-1, 1] (a no-op for
    models without them; see ``constraints``).

    Fields: name, momentum, b1, b2, eps, rho, initial_accumulator, trust_coefficient,
    weight_decay, weight_decay_style, weight_decay_on, trust_ratio_on (all | kernels),
    lr_multipliers (per group), grad_clip_norm (0: off), accumulation_steps (k > 1: MultiSteps).
    """
    check_optimizer_config(config)
    rule = OPTIMIZERS[config.name]
    style = weight_decay_style(config)
    decay = []
    if config.weight_decay > 0:
        decay = [
            optax.add_decayed_weights(config.weight_decay, mask=target_mask(config.weight_decay_on))
        ]
    transforms = []
    if config.grad_clip_norm > 0:
        transforms.append(optax.clip_by_global_norm(config.grad_clip_norm))
    transforms += decay if style == "coupled" else []
    transforms += rule.direction(config)
    transforms += decay if style == "decoupled" else []
    if rule.trust_ratio is not None:
        trust_ratio, mask = rule.trust_ratio(config), target_mask(config.trust_ratio_on)
        transforms.append(trust_ratio if mask is None else optax.masked(trust_ratio, mask))
    transforms.append(optax.scale_by_learning_rate(learning_rate))
    transforms += rule.after_lr(config)
    multipliers = {group: config.lr_multipliers.get(group, 1.0) for group in GROUPS}
    if any(multiplier != 1.0 for multiplier in multipliers.values()):
        transforms.append(scale_by_group(multipliers))
    if partition is not None and partition.changes_lrs:
        transforms.append(partition.scale_lrs())
    transforms.append(clip_latent_weights())
    optimizer = optax.chain(*transforms)
    if partition is not None and partition.frozen:
        optimizer = partition.apply(optimizer)
    return accumulate(optimizer, config.accumulation_steps)

"""The one place where the batch size scales the learning rate.

Configs give `base_lr` at `base_batch_size` and a rule; the peak learning rate is resolved here,
at run time, so `--config.batch_size=...` rescales it instead of silently keeping a stale value.
"""
import math
from bnresearch.errors import UsageError

LR_SCALING_RULES = ("none", "linear", "sqrt")


def scaled_learning_rate(base_lr: float, batch_size: int, base_batch_size: int, rule: str) -> float:
    """Peak lr for `batch_size`: unchanged (none), x B/B0 (linear, Goyal et al. 2017), or
    x sqrt(B/B0) (sqrt, Krizhevsky 2014; Hoffer et al. 2017)."""
    ratio = batch_size / base_batch_size
    if rule == "none":
        return base_lr
    if rule == "linear":
        return base_lr * ratio
    if rule == "sqrt":
        return base_lr * math.sqrt(ratio)
    raise UsageError(f"unknown lr_scaling {rule!r}; valid: {', '.join(LR_SCALING_RULES)}")

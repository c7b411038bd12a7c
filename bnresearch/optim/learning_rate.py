"""The one place where the batch size scales the learning rate and its warmup.

Configs give `base_lr` at `base_batch_size` and a rule; the peak learning rate is resolved here,
at run time, so `--config.batch_size=...` rescales it instead of silently keeping a stale value.
"The batch size" is always the number of distinct examples per update: batch_size x
optimizer.accumulation_steps. Batch augmentation's copies do not count (Hoffer et al. keep the
baseline's lr), and under a batch-size schedule each phase has its own (`phase_peak_lrs`).
"""

import math
from typing import Sequence

from bnresearch.config.durations import parse_duration
from bnresearch.errors import UsageError

LR_SCALING_RULES = ("none", "linear", "sqrt")
WARMUP_RULES = ("linear", "legw")
BATCH_SIZE_SCHEDULE_LR = ("fixed", "rescaled")


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


def phase_peak_lrs(
    base_lr: float, base_batch_size: int, rule: str, batch_sizes: Sequence[int], mode: str
) -> tuple[float, ...]:
    """The peak lr of each phase of a batch-size schedule (`batch_sizes`: examples per update).

    fixed: every phase keeps the first phase's lr; growing the batch then does what an lr decay
    would (Smith et al. 2018, arXiv:1711.00489). rescaled: each phase's lr follows `rule` for its
    own batch size, so the lr grows with the batch.
    """
    if mode == "fixed":
        return (scaled_learning_rate(base_lr, batch_sizes[0], base_batch_size, rule),) * len(
            batch_sizes
        )
    if mode == "rescaled":
        return tuple(
            scaled_learning_rate(base_lr, size, base_batch_size, rule) for size in batch_sizes
        )
    raise UsageError(
        f"unknown batch_size_schedule.lr {mode!r}; valid: {', '.join(BATCH_SIZE_SCHEDULE_LR)}"
    )


def legw_warmup_epochs(warmup_epochs: float, batch_size: int, base_batch_size: int) -> float:
    """LEGW: the warmup `warmup_epochs` long at `base_batch_size`, x B/B0 epochs at `batch_size`.

    You et al., "Large-Batch Training for LSTM and Beyond", 2019, arXiv:1901.08256. In steps the
    warmup then stays as long as at B0 (k times the epochs, k times fewer steps per epoch).
    """
    return warmup_epochs * batch_size / base_batch_size


def check_warmup(warmup: str, rule: str, lr_scaling: str) -> None:
    """LEGW is sqrt scaling plus the longer warmup, so `legw` requires lr_scaling=sqrt rather than
    implying it: the config then states the lr rule that is used, and a mismatch is an error
    instead of a silent override. Its warmup is in epochs: at B0, the one the rule stretches."""
    if rule not in WARMUP_RULES:
        raise UsageError(f"unknown schedule.warmup_rule {rule!r}; valid: {', '.join(WARMUP_RULES)}")
    if rule == "legw":
        if lr_scaling != "sqrt":
            raise UsageError(
                f"schedule.warmup_rule=legw goes with lr_scaling='sqrt' (You et al. "
                f"2019), not {lr_scaling!r}; set --config.lr_scaling=sqrt"
            )
        if parse_duration(warmup)[1] != "epochs":
            raise UsageError(
                f"schedule.warmup_rule=legw needs schedule.warmup in epochs (at "
                f"base_batch_size), not {warmup!r}"
            )

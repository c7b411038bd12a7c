"""The valid range of every numeric field of the schema, in one table.

A value that cannot be meant (a negative or NaN learning rate, a momentum of 1, a batch of 0) is
refused in one line before anything runs, instead of training to a result that means nothing
(gradient ascent at `base_lr=-0.1` ends "done" at chance accuracy). Preflight checks the whole
config against the table, first; ``make_optimizer``, which is also called without a whole
config, checks its block against the same rows, so a value is judged the same wherever it
enters.

Not here: the options of a normalization, activation or model (their modules check their own
fields, see ``bnresearch/layers``), the model's dropout rates and bits (checked when the model is
built), the dataset block (``data.DatasetSettings``), and ``mesh.shape``, whose sizes are judged
against the devices present (``bnresearch/parallel/mesh.py``).
"""

import dataclasses
import math

from bnresearch.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Range:
    """Valid values: numbers (or whole numbers) from `low` to `high`, each end open or closed."""

    whole: bool = False
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    says: str = ""  # how the error puts it, after "must "

    def admits(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.whole and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


POSITIVE_WHOLE = Range(whole=True, low=1, says="be a positive whole number")
WHOLE_FROM_ZERO = Range(whole=True, low=0, says="be a whole number >= 0")
POSITIVE = Range(low=0, low_open=True, says="be a positive number")
NOT_NEGATIVE = Range(low=0, says="be a number >= 0")
FRACTION = Range(low=0, high=1, high_open=True, says="lie in [0, 1)")

RANGES: dict[str, Range] = {
    "seed": WHOLE_FROM_ZERO,
    "batch_size": POSITIVE_WHOLE,
    "eval_batch_size": POSITIVE_WHOLE,
    "base_batch_size": POSITIVE_WHOLE,
    "batch_augmentation.multiplicity": POSITIVE_WHOLE,
    "checkpoint.keep": POSITIVE_WHOLE,
    "steps_per_call": POSITIVE_WHOLE,
    "base_lr": Range(low=0, low_open=True, says="be a positive, finite learning rate"),
    "label_smoothing": FRACTION,
    "schedule.decay_factor": POSITIVE,
    "schedule.power": POSITIVE,
    "schedule.decay_rate": POSITIVE,
    "optimizer.momentum": FRACTION,
    "optimizer.b1": FRACTION,
    "optimizer.b2": FRACTION,
    "optimizer.eps": POSITIVE,
    "optimizer.rho": FRACTION,
    "optimizer.initial_accumulator": NOT_NEGATIVE,
    "optimizer.trust_coefficient": POSITIVE,
    "optimizer.weight_decay": NOT_NEGATIVE,
    "optimizer.grad_clip_norm": NOT_NEGATIVE,  # 0 turns clipping off
    "optimizer.accumulation_steps": POSITIVE_WHOLE,
    "optimizer.lr_multipliers.kernel": NOT_NEGATIVE,  # 0 freezes the group
    "optimizer.lr_multipliers.scale": NOT_NEGATIVE,
    "optimizer.lr_multipliers.bias": NOT_NEGATIVE,
    "noise_scale.sub_batches": Range(
        whole=True, low=2, says="be a whole number >= 2 (two batch sizes are needed)"
    ),
    "noise_scale.ema_decay": FRACTION,
    "gradinit.iterations": POSITIVE_WHOLE,
    "gradinit.lr": POSITIVE,
    "gradinit.inner_lr": POSITIVE,
    "gradinit.gamma": POSITIVE,
    "gradinit.norm_order": Range(whole=True, low=1, high=2, says="be 1 or 2"),
    "gradinit.min_scale": POSITIVE,
    "sharding.min_size": WHOLE_FROM_ZERO,  # elements; 0: fsdp splits every tensor it can
    "fine_tune.train_last_stages": WHOLE_FROM_ZERO,  # 0: nothing frozen by stage
    "fine_tune.body_lr": NOT_NEGATIVE,
    "fine_tune.head_lr": NOT_NEGATIVE,
}


def check_ranges(config, block: str = "") -> None:
    """Raises a one-line UsageError for the first field of `config` outside its range.

    `config` is the whole config, or its sub-block `block` ("optimizer", "schedule", ...), in
    which case the rows of that block are checked and named by their full field.
    """
    prefix = f"{block}." if block else ""
    for field, valid in RANGES.items():
        if not field.startswith(prefix):
            continue
        value = config
        for part in field[len(prefix) :].split("."):
            value = value[part]
        if not valid.admits(value):
            raise UsageError(f"{field}={value!r} must {valid.says}")

"""Checks of a resolved config that need no data and no compute.

Everything a typo can break is caught here, so a bad launch fails in a second with one line that
names what is valid, before any dataset is prepared or any step is compiled.
"""
import ml_collections

from bnresearch import data, models
from bnresearch.config.durations import parse_duration
from bnresearch.config.learning_rate import LR_SCALING_RULES
from bnresearch.optim.optimizers import check_optimizer_config
from bnresearch.optim.schedules import DECAYS
from bnresearch.errors import UsageError

COMPUTE_DTYPE_NAMES = ("float32", "bfloat16")


def _check_choice(field: str, value: str, valid) -> None:
    if value not in valid:
        raise UsageError(f"unknown {field} {value!r}; valid: {', '.join(valid)}")


def _check_positive(field: str, value) -> None:
    if not isinstance(value, int) or value <= 0:
        raise UsageError(f"{field}={value!r} must be a positive whole number")


def validate_config(config: ml_collections.ConfigDict) -> None:
    data.check_dataset_name(config.dataset.name)
    # Building a flax module is lazy and cheap; it raises on unknown names and options, and on
    # normalizations that cannot work at these batch sizes.
    models.model_from_config(config.model, num_classes=2, batch_size=config.batch_size,
                             eval_batch_size=config.eval_batch_size)
    check_optimizer_config(config.optimizer)
    _check_choice("lr_scaling", config.lr_scaling, LR_SCALING_RULES)
    _check_choice("schedule.decay", config.schedule.decay, tuple(DECAYS))
    _check_choice("compute_dtype", config.compute_dtype, COMPUTE_DTYPE_NAMES)
    for field, value in (("batch_size", config.batch_size),
                         ("eval_batch_size", config.eval_batch_size),
                         ("base_batch_size", config.base_batch_size),
                         ("checkpoint.keep", config.checkpoint.keep)):
        _check_positive(field, value)
    if not 0.0 <= config.label_smoothing < 1.0:
        raise UsageError(f"label_smoothing={config.label_smoothing!r} must lie in [0, 1)")
    for duration in (config.train_duration, config.schedule.warmup, config.log_every,
                     config.eval_every, config.checkpoint.every, *config.schedule.boundaries):
        parse_duration(duration)

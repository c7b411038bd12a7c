"""Checks of a resolved config that need no data and no compute.

Everything a typo can break is caught here, so a bad launch fails in a second with one line that
names what is valid, before any dataset is prepared or any step is compiled.
"""
import ml_collections

from bnresearch import data, models
from bnresearch.config.durations import parse_duration
from bnresearch.config.learning_rate import BATCH_SIZE_SCHEDULE_LR, LR_SCALING_RULES, check_warmup
from bnresearch.measure.noise_scale import check_noise_scale_config
from bnresearch.optim.batch_size_schedule import schedule_from_config
from bnresearch.optim.optimizers import check_optimizer_config
from bnresearch.optim.schedules import DECAYS, check_decay_options
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
    check_optimizer_config(config.optimizer)
    _check_choice("lr_scaling", config.lr_scaling, LR_SCALING_RULES)
    _check_choice("schedule.decay", config.schedule.decay, tuple(DECAYS))
    check_decay_options(config.schedule)
    _check_choice("compute_dtype", config.compute_dtype, COMPUTE_DTYPE_NAMES)
    for field, value in (("batch_size", config.batch_size),
                         ("eval_batch_size", config.eval_batch_size),
                         ("base_batch_size", config.base_batch_size),
                         ("batch_augmentation.multiplicity",
                          config.batch_augmentation.multiplicity),
                         ("checkpoint.keep", config.checkpoint.keep)):
        _check_positive(field, value)
    batch_size_schedule = schedule_from_config(config.batch_size_schedule)
    _check_choice("batch_size_schedule.lr", config.batch_size_schedule.lr, BATCH_SIZE_SCHEDULE_LR)
    check_warmup(config.schedule.warmup, config.schedule.warmup_rule, config.lr_scaling)
    images_per_call = [size * config.batch_augmentation.multiplicity for size in
                       (config.batch_size, *(size for _, size in batch_size_schedule))]
    check_noise_scale_config(config.noise_scale, images_per_call)
    # Building a flax module is lazy and cheap; it raises on unknown names and options, and on
    # normalizations that cannot work at the batch sizes a train step sees.
    models.model_from_config(config.model, num_classes=2, batch_sizes=images_per_call,
                             eval_batch_size=config.eval_batch_size)
    if not 0.0 <= config.label_smoothing < 1.0:
        raise UsageError(f"label_smoothing={config.label_smoothing!r} must lie in [0, 1)")
    for duration in (config.train_duration, config.schedule.warmup, config.log_every,
                     config.eval_every, config.checkpoint.every, *config.schedule.boundaries):
        parse_duration(duration)

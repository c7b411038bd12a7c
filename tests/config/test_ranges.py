"""Every numeric field of the schema has a valid range, and values outside it are refused."""

import math

import pytest

from bnresearch.config.defaults import base_config
from bnresearch.config.ranges import RANGES, check_ranges
from bnresearch.errors import UsageError


def with_value(field, value):
    config = base_config()
    *parents, leaf = field.split(".")
    block = config
    for parent in parents:
        block = block[parent]
    block[leaf] = value
    return config


def test_the_defaults_are_in_range_and_every_row_names_a_field():
    check_ranges(base_config())  # a KeyError here: a row names a field the schema lacks


# Values nobody can mean, field by field: an independent list, which the table must refuse.
# (A value of the wrong type, 1.5 for the seed, is refused by the typed config itself.)
REFUSED = [
    ("base_lr", float("nan")),
    ("base_lr", -0.1),
    ("base_lr", 0.0),
    ("base_lr", math.inf),
    ("seed", -1),
    ("batch_size", 0),
    ("batch_size", True),
    ("eval_batch_size", 0),
    ("base_batch_size", -8),
    ("batch_augmentation.multiplicity", 0),
    ("checkpoint.keep", 0),
    ("steps_per_call", 0),
    ("label_smoothing", 1.0),
    ("label_smoothing", -0.1),
    ("schedule.decay_factor", 0.0),
    ("schedule.power", -1.0),
    ("schedule.decay_rate", 0.0),
    ("optimizer.momentum", 1.0),
    ("optimizer.momentum", -0.5),
    ("optimizer.b1", 1.0),
    ("optimizer.b2", 1.5),
    ("optimizer.eps", 0.0),
    ("optimizer.rho", 1.0),
    ("optimizer.initial_accumulator", -1.0),
    ("optimizer.trust_coefficient", 0.0),
    ("optimizer.weight_decay", -1e-4),
    ("optimizer.weight_decay", float("nan")),
    ("optimizer.grad_clip_norm", -1.0),
    ("optimizer.accumulation_steps", 0),
    ("optimizer.lr_multipliers.scale", -0.01),
    ("noise_scale.sub_batches", 1),
    ("noise_scale.ema_decay", 1.0),
    ("fine_tune.train_last_stages", -1),
    ("fine_tune.body_lr", -0.1),
    ("fine_tune.head_lr", float("nan")),
    ("optimizer.lr_multipliers.kernel", -1.0),
    ("optimizer.lr_multipliers.bias", math.nan),
    ("sharding.min_size", -1),
    ("gradinit.iterations", 0),
    ("gradinit.lr", 0.0),
    ("gradinit.inner_lr", -0.1),
    ("gradinit.gamma", math.inf),
    ("gradinit.norm_order", 3),
    ("gradinit.min_scale", 0.0),
]


@pytest.mark.parametrize("field, value", REFUSED)
def test_a_value_out_of_range_is_refused_in_one_line_naming_the_field(field, value):
    with pytest.raises(UsageError, match=rf"^{field}=.* must ") as error:
        check_ranges(with_value(field, value))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "field, value",
    [
        ("base_lr", 3.2),
        ("seed", 0),
        ("label_smoothing", 0.0),
        ("optimizer.momentum", 0.0),
        ("optimizer.weight_decay", 0.0),
        ("optimizer.grad_clip_norm", 0.0),
        ("optimizer.lr_multipliers.bias", 0.0),
        ("noise_scale.sub_batches", 2),
        ("schedule.decay_factor", 2.0),
    ],
)
def test_edge_values_that_mean_something_are_accepted(field, value):
    check_ranges(with_value(field, value))


def test_every_row_is_tested():
    assert {field for field, _ in REFUSED} == set(RANGES)

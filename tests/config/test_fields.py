"""set_fields: a config file's dotted overrides land on the fields they name, typos are refused."""

import pytest

from bnresearch.config.defaults import base_config
from bnresearch.config.fields import set_fields, with_defaults
from bnresearch.errors import UsageError


def test_sets_nested_fields_and_typed_placeholders():
    config = base_config()
    set_fields(
        config,
        {
            "batch_size": 8,
            "model.norm_kwargs.num_groups": 4,  # a placeholder: None until set
            "dataset.augment_kwargs.cutout.length": 12,
        },
    )
    assert config.batch_size == 8
    assert config.model.norm_kwargs.num_groups == 4
    assert config.dataset.augment_kwargs.cutout.length == 12
    assert config.model.norm_kwargs.epsilon is None  # untouched fields keep their defaults


def test_unknown_field_names_the_valid_ones_and_changes_nothing():
    config = base_config()
    with pytest.raises(
        UsageError, match=r"unknown config field 'model.nrm'; fields of model: .*norm"
    ):
        set_fields(config, {"model.nrm": "group"})
    assert config.to_dict() == base_config().to_dict()


def test_with_defaults_fills_only_the_missing_fields_at_every_depth():
    stored = {"seed": 3, "model": {"name": "mlp"}, "steps_per_call": [1]}
    defaults = {"seed": 0, "model": {"name": "cnn", "norm": "batch"}, "mesh": {"data": -1}}
    assert with_defaults(stored, defaults) == {
        "seed": 3,
        "model": {"name": "mlp", "norm": "batch"},
        "steps_per_call": [1],
        "mesh": {"data": -1},
    }
    assert stored == {"seed": 3, "model": {"name": "mlp"}, "steps_per_call": [1]}  # untouched

"""The config schema: option blocks list exactly the registries' options, and overrides of
options reach the model through the locked config."""

import pytest

from bnresearch.config.defaults import base_config
from bnresearch.data.catalog import DatasetSettings
from bnresearch.errors import UsageError
from bnresearch.layers.activations import ACTIVATIONS
from bnresearch.layers.normalization import BUILD_FACTS, NORMALIZATIONS
from bnresearch.layers.registry import option_names
from bnresearch.models import BUILD_ARGUMENTS, MODELS, model_from_config
from bnresearch.registered_options import COMMAND, TABLE_FILE, generated_source
from tests.data.datatest_utils import DATASET_FIELDS


def union_of_options(registry, reserved=()):
    return {name for entry in registry.values() for name in option_names(entry, reserved)}


@pytest.mark.parametrize(
    "block, registry, reserved",
    [
        ("norm_kwargs", NORMALIZATIONS, BUILD_FACTS),
        ("activation_kwargs", ACTIVATIONS, ()),
        ("options", MODELS, BUILD_ARGUMENTS),
    ],
)
def test_option_blocks_list_every_registered_option(block, registry, reserved):
    assert set(base_config().model[block]) == union_of_options(registry, reserved)


def test_the_generated_option_table_is_current():
    assert TABLE_FILE.read_text() == generated_source(), (
        f"bnresearch/config/options.py is out of date: run `{COMMAND}`"
    )


def test_the_dataset_block_takes_every_dataset_setting():
    config = base_config()
    assert set(config.dataset) == set(DATASET_FIELDS)
    DatasetSettings.from_config(config.dataset)  # the defaults are valid settings


def test_unset_options_leave_the_variant_defaults():
    config = base_config()
    config.model.name, config.model.norm = "mlp", "group"
    config.model.norm_kwargs.num_groups = 4
    config.model.options.hidden_sizes = (8, 12)
    config.lock()
    model = model_from_config(config.model, num_classes=3)
    assert model.hidden_sizes == (8, 12)
    norm = model.layers.norm_factory(parent=None)
    assert norm.num_groups == 4 and norm.group_size is None and norm.epsilon == 1e-5


def test_an_option_of_another_variant_is_refused():
    config = base_config()
    config.model.norm = "batch"
    config.model.norm_kwargs.num_groups = 4
    with pytest.raises(UsageError, match="'num_groups' for normalization 'batch'"):
        model_from_config(config.model, num_classes=3)

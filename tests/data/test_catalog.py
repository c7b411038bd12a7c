"""Dataset names and config fields are checked cheaply, with one-line errors that say what is
valid."""

import pytest

from bnresearch.data.catalog import (
    DatasetError,
    DatasetSettings,
    check_dataset_name,
    resolve_data_dir,
)
from tests.data.datatest_utils import DATASET_FIELDS, make_config


@pytest.mark.parametrize(
    "name",
    ["digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn_cropped", "imagenet2012"],
)
def test_known_names_pass(name):
    check_dataset_name(name)


def test_unknown_name_lists_valid_names_on_one_line():
    with pytest.raises(ValueError) as error:
        check_dataset_name("cifar11")
    message = str(error.value)
    assert "\n" not in message
    assert "'cifar11'" in message
    for name in ["digits", "mnist", "cifar10", "imagenet2012", "imagefolder:PATH"]:
        assert name in message


def test_imagefolder_needs_existing_train_and_test(tmp_path):
    with pytest.raises(DatasetError, match="lacks train/ and test/"):
        check_dataset_name(f"imagefolder:{tmp_path / 'nowhere'}")
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="lacks test/"):
        check_dataset_name(f"imagefolder:{tmp_path}")
    (tmp_path / "test").mkdir()
    check_dataset_name(f"imagefolder:{tmp_path}")
    with pytest.raises(DatasetError, match="names no folder"):
        check_dataset_name("imagefolder:")


def test_settings_require_every_field():
    config = make_config("digits", "")
    del config["crop_padding"]
    del config["num_threads"]
    with pytest.raises(DatasetError) as error:
        DatasetSettings.from_config(config)
    message = str(error.value)
    assert "lacks crop_padding, num_threads" in message
    assert all(field in message for field in DATASET_FIELDS)


@pytest.mark.parametrize(
    "field, value, expected",
    [
        (
            "augment",
            "crop_flip,cutuot",
            "unknown augmentation 'cutuot' in augment 'crop_flip,cutuot'; valid: auto, none, crop,"
            " crop_flip, resized_crop_flip, flip, ",
        ),
        (
            "augment_kwargs",
            {"cutout": {"lenght": 8}},
            r"unknown option\(s\) 'lenght' for augmentation 'cutout'; valid options: length, fill",
        ),
        (
            "augment_kwargs",
            {"rotate": {"max_degrees": -1.0}},
            r"augment_kwargs.rotate.max_degrees=-1.0 must lie in \[0, 180\]",
        ),
        ("crop_padding", -1, "crop_padding must be an integer >= 0"),
        ("image_size", 0, "image_size must be an integer >= 1"),
        ("num_workers", 1.5, "num_workers must be an integer >= 0"),
        ("prefetch", True, "prefetch must be an integer >= 0"),
        ("name", "nope", "unknown dataset 'nope'"),
        ("data_dir", None, "data_dir must be a string"),
        ("num_threads", 3, r"prefetch \(0\) must be >= num_threads \(3\)"),
    ],
)
def test_settings_reject_bad_values(field, value, expected):
    config = make_config("digits", "").to_dict()
    config[field] = value
    with pytest.raises(DatasetError, match=expected):
        DatasetSettings.from_config(config)


def test_empty_data_dir_means_tfds_default(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert resolve_data_dir("") == str(tmp_path)
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert resolve_data_dir("").endswith("tensorflow_datasets")
    assert resolve_data_dir(str(tmp_path / "mine")) == str(tmp_path / "mine")

"""load_dataset: TFDS datasets that cannot be prepared fail fast and clearly; preparation is safe
when several loaders race."""

import os
import threading

import pytest
import requests
import tensorflow_datasets as tfds

from bnresearch.data.catalog import TFDS_DATASETS, DatasetError
from bnresearch.data.dataset import load_dataset
from bnresearch.data.digits import SklearnDigits
from tests.data.datatest_utils import make_config


def test_failed_download_says_what_to_do(tmp_path, monkeypatch):
    def no_network(builder, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'storage.googleapis.com'")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
    with pytest.raises(DatasetError) as error:
        load_dataset(make_config("cifar10", str(tmp_path)))
    message = str(error.value)
    assert "\n" not in message
    assert "'cifar10'" in message and str(tmp_path) in message
    assert "ConnectionError: Failed to resolve" in message
    assert "machine with network" in message and "'digits' or 'imagefolder:PATH'" in message
    assert isinstance(error.value.__cause__, requests.exceptions.ConnectionError)


def test_imagenet_asks_for_its_manual_files(tmp_path, monkeypatch):
    def unexpected(builder, **kwargs):
        raise AssertionError("must not try to download ImageNet")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", unexpected)
    with pytest.raises(DatasetError) as error:
        load_dataset(make_config("imagenet2012", str(tmp_path)))
    message = str(error.value)
    assert "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar" in message
    assert os.path.join(str(tmp_path), "downloads", "manual") in message and "\n" not in message


def test_tfds_datasets_get_the_documented_default_augmentation():
    auto = {name: spec.auto_augment for name, spec in TFDS_DATASETS.items()}
    assert auto == {
        "mnist": "none",
        "fashion_mnist": "none",
        "cifar10": "crop_flip",
        "cifar100": "crop_flip",
        "svhn_cropped": "none",
        "imagenet2012": "resized_crop_flip",
    }
    for spec in TFDS_DATASETS.values():
        assert len(spec.mean) == len(spec.std) in (1, 3)


def test_concurrent_loaders_prepare_once(tmp_path, monkeypatch):
    generations = []
    original = SklearnDigits._split_generators

    def counted(self, dl_manager):
        generations.append(1)
        return original(self, dl_manager)

    monkeypatch.setattr(SklearnDigits, "_split_generators", counted)
    results, errors = [], []

    def load():
        try:
            results.append(load_dataset(make_config("digits", str(tmp_path))).info)
        except Exception as err:  # pylint: disable=broad-except
            errors.append(err)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(generations) == 1
    assert len(results) == 3 and len(set(results)) == 1

"""The prepared digits equal scikit-learn's data, scaled and split as documented."""

import hashlib

import numpy as np
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from bnresearch.data.dataset import load_dataset
from tests.data.datatest_utils import make_config


def reference_split():
    labels = load_digits().target
    train, test = train_test_split(
        np.arange(len(labels)), test_size=360, stratify=labels, random_state=0
    )
    return np.sort(train), np.sort(test)


def test_split_sizes_and_info(digits_dir):
    dataset = load_dataset(make_config("digits", digits_dir))
    info = dataset.info
    assert (info.name, info.num_classes, info.image_shape) == ("digits", 10, (8, 8, 1))
    assert (info.num_train, info.num_test) == (1437, 360)
    assert dataset.augmentation.name == "none"


def test_split_is_fixed():
    _, test = reference_split()
    # Pinned so that a change in scikit-learn's splitting shows up here, not as drifting results.
    assert test[:10].tolist() == [21, 24, 28, 34, 35, 37, 39, 42, 45, 51]
    assert hashlib.sha256(test.astype(np.int64).tobytes()).hexdigest()[:16] == "2fbaae31b8c6aad1"


def test_records_equal_scaled_sklearn_data(digits_dir):
    digits = load_digits()
    expected_pixels = np.rint(digits.images * 255 / 16).astype(np.uint8)
    assert expected_pixels.max() == 255 and expected_pixels.min() == 0
    dataset = load_dataset(make_config("digits", digits_dir))
    for source, rows in zip((dataset.train_source, dataset.test_source), reference_split()):
        assert len(source) == len(rows)
        for record, row in zip(source, rows):
            assert record["label"] == digits.target[row]
            np.testing.assert_array_equal(record["image"][..., 0], expected_pixels[row])


def test_normalization_statistics_are_the_train_split_ones(digits_dir):
    train, _ = reference_split()
    pixels = np.rint(load_digits().images[train] * 255 / 16) / 255
    dataset = load_dataset(make_config("digits", digits_dir))
    np.testing.assert_allclose(dataset.mean, [pixels.mean()], rtol=1e-12)
    np.testing.assert_allclose(dataset.std, [pixels.std()], rtol=1e-12)


def test_reading_prepared_data_does_not_prepare_again(digits_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("prepared again")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
    assert load_dataset(make_config("digits", digits_dir)).info.num_train == 1437

"""dataset.classes and dataset.train_per_class on an image folder the test writes."""

import collections

import numpy as np
import pytest

from bnresearch.data import DatasetError, load_dataset
from tests.data.datatest_utils import make_config, write_image_folder

CLASSES = ["ant", "bee", "cow", "doe"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("four_classes")
    return root, write_image_folder(root, CLASSES, {"train": 5, "test": 2}, (6, 6))


def load(folder, data_dir, **overrides):
    return load_dataset(make_config(f"imagefolder:{folder}", str(data_dir), **overrides))


def test_kept_classes_are_relabelled_in_their_order_with_n_images_each(folder, tmp_path):
    root, written = folder
    dataset = load(root, tmp_path, classes=(3, 1), train_per_class=2)
    assert (dataset.info.num_classes, dataset.info.num_train, dataset.info.num_test) == (2, 4, 4)
    new_label = {"doe": 0, "bee": 1}
    for split, source in (("train", dataset.train_source), ("test", dataset.test_source)):
        counts = collections.Counter()
        for record in source:
            path = record["file_name"].decode()
            assert path.startswith(split + "/")
            assert record["label"] == new_label[path.split("/")[1]]
            np.testing.assert_array_equal(record["image"], written[path])
            counts[record["label"]] += 1
        assert counts == {0: 2, 1: 2}
    # The first two of each class in the whole split's order: the same subset at every load.
    full = load(root, tmp_path)
    first = collections.defaultdict(list)
    for record in full.train_source:
        first[record["label"]].append(record["file_name"])
    expected = {name for label in (3, 1) for name in first[label][:2]}
    assert {record["file_name"] for record in dataset.train_source} == expected


def test_all_classes_with_n_images_each(folder, tmp_path):
    root, _ = folder
    dataset = load(root, tmp_path, train_per_class=3)
    assert (dataset.info.num_classes, dataset.info.num_train, dataset.info.num_test) == (4, 12, 8)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"classes": (1, 4)},
            r"dataset classes \[4\] do not exist; the dataset has classes 0 to 3",
        ),
        ({"train_per_class": 6}, "train_per_class=6, but the train split holds only 5 of class 0"),
        ({"classes": (1, 1)}, "dataset classes must be distinct class indices"),
        ({"train_per_class": -1}, "train_per_class must be an integer >= 0"),
    ],
)
def test_a_subset_the_data_cannot_give_is_refused(folder, tmp_path, overrides, message):
    with pytest.raises(DatasetError, match=message):
        load(folder[0], tmp_path, **overrides)

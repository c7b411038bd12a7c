"""Image folders become TFDS datasets with labels from folder names and the pixels written."""
import os

import numpy as np
import pytest
from PIL import Image

from bnresearch.data.catalog import DatasetError
from bnresearch.data import dataset as dataset_module
from bnresearch.data.dataset import load_dataset
from tests.data.datatest_utils import make_config, write_image_folder

CLASSES = ["cat", "dog", "emu"]


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("small_folder")
    written = write_image_folder(root, CLASSES, {"train": 4, "test": 2}, (10, 12))
    return root, written


def load_folder(folder, data_dir, **overrides):
    return load_dataset(make_config(f"imagefolder:{folder}", str(data_dir), **overrides))


@pytest.mark.parametrize("in_memory", [True, False])
def test_labels_and_pixels_match_the_files(small_folder, tmp_path, monkeypatch, in_memory):
    # 18 images of 10x12x3 fit in memory; with no room they are decoded at each read instead.
    if not in_memory:
        monkeypatch.setattr(dataset_module, "IN_MEMORY_MAX_BYTES", 0)
    root, written = small_folder
    dataset = load_folder(root, tmp_path)
    assert isinstance(dataset.train_source, list) == in_memory
    info = dataset.info
    assert (info.num_classes, info.num_train, info.num_test) == (3, 12, 6)
    assert info.image_shape == (10, 12, 3)
    for source in (dataset.train_source, dataset.test_source):
        for record in source:
            path = record["file_name"].decode()
            assert record["label"] == CLASSES.index(path.split("/")[1])
            np.testing.assert_array_equal(record["image"], written[path])
    assert sorted(r["file_name"].decode() for r in dataset.train_source) == sorted(
        p for p in written if p.startswith("train/")
    )


def test_statistics_sizes_and_auto_augmentation(small_folder, tmp_path):
    root, written = small_folder
    dataset = load_folder(root, tmp_path)
    train_pixels = np.stack([p for path, p in written.items() if path.startswith("train/")]) / 255
    np.testing.assert_allclose(dataset.mean, train_pixels.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(dataset.std, train_pixels.std(axis=(0, 1, 2)), rtol=1e-12)
    # Images of 10x12 are small: CIFAR-style augmentation at their own size.
    assert dataset.augmentation.name == "crop_flip"


def test_large_images_get_resized_crops_by_default(tmp_path):
    write_image_folder(tmp_path / "big", ["a", "b"], {"train": 1, "test": 1}, (65, 80))
    dataset = load_folder(tmp_path / "big", tmp_path / "data", image_size=32)
    assert dataset.augmentation.name == "resized_crop_flip"
    assert dataset.info.image_shape == (32, 32, 3)


def test_differing_sizes_need_resizing(tmp_path):
    root = tmp_path / "mixed"
    write_image_folder(root, ["a", "b"], {"train": 2, "test": 1}, (8, 8))
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(root / "train" / "a" / "odd.png")
    with pytest.raises(DatasetError, match="differing sizes.*use augment='resized_crop_flip'"):
        load_folder(root, tmp_path / "data")
    dataset = load_folder(root, tmp_path / "data", augment="resized_crop_flip", image_size=6)
    assert dataset.info.image_shape == (6, 6, 3)


def test_changed_file_list_gets_a_fresh_copy(tmp_path):
    root = tmp_path / "growing"
    write_image_folder(root, ["a", "b"], {"train": 2, "test": 1}, (8, 8))
    assert load_folder(root, tmp_path / "data").info.num_train == 4
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "train" / "b" / "new.png")
    assert load_folder(root, tmp_path / "data").info.num_train == 5
    assert len(os.listdir(tmp_path / "data" / "imagefolder")) == 2


def test_mismatched_class_sets_are_reported(tmp_path):
    write_image_folder(
        tmp_path / "f", ["a", "b"], {"train": 1, "test": 1}, (4, 4), test_classes=["a", "c"]
    )
    with pytest.raises(DatasetError, match=r"only in train/: \['b'\]; only in test/: \['c'\]"):
        load_folder(tmp_path / "f", tmp_path / "data")


def test_missing_folder_and_empty_class_are_reported(tmp_path):
    with pytest.raises(DatasetError, match="lacks train/ and test/"):
        load_folder(tmp_path / "absent", tmp_path / "data")
    write_image_folder(tmp_path / "f", ["a"], {"train": 1, "test": 1}, (4, 4))
    (tmp_path / "f" / "train" / "b").mkdir()
    (tmp_path / "f" / "test" / "b").mkdir()
    (tmp_path / "f" / "train" / "b" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match=r"train/ classes without .* images: \['b'\]"):
        load_folder(tmp_path / "f", tmp_path / "data")


def test_unreadable_image_is_named(tmp_path):
    write_image_folder(tmp_path / "f", ["a"], {"train": 1, "test": 1}, (4, 4))
    (tmp_path / "f" / "train" / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="cannot read image .*broken.jpg"):
        load_folder(tmp_path / "f", tmp_path / "data")


def test_image_in_another_format_is_refused_at_preparation(tmp_path):
    write_image_folder(tmp_path / "f", ["a"], {"train": 1, "test": 1}, (4, 4))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "f" / "test" / "a" / "gif.png", format="GIF")
    with pytest.raises(DatasetError, match="cannot read image .*gif.png"):
        load_folder(tmp_path / "f", tmp_path / "data")

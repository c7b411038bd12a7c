"""Image folders become TFDS datasets with labels from folder names and the pixels written."""

import dataclasses
import io
import os

import numpy as np
import pytest
from PIL import Image

from bnresearch.data import dataset as dataset_module
from bnresearch.data import imagefolder as imagefolder_module
from bnresearch.data.augment import make_augmentation
from bnresearch.data.catalog import DatasetError
from bnresearch.data.dataset import load_dataset
from bnresearch.data.imagefolder import folder_fingerprint, scan_image_folder
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


def test_auto_composes_with_other_augmentations_and_their_options(small_folder, tmp_path):
    root, _ = small_folder
    options = {"cutout": {"length": 3, "fill": 9}}
    dataset = load_folder(root, tmp_path, augment="auto,cutout", augment_kwargs=options)
    assert dataset.augmentation.name == "crop_flip,cutout"
    expected = make_augmentation("crop_flip,cutout", crop_padding=4, image_size=1, options=options)
    image = dataset.train_source[0]["image"]
    for seed in range(5):
        np.testing.assert_array_equal(
            dataset.augmentation.train(image, np.random.default_rng(seed)),
            expected.train(image, np.random.default_rng(seed)),
        )


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
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(
        tmp_path / "f" / "test" / "a" / "gif.png", format="GIF"
    )
    with pytest.raises(DatasetError, match="cannot read image .*gif.png"):
        load_folder(tmp_path / "f", tmp_path / "data")


# The prepared copy follows its source; decode failures name the file.


def jpeg_bytes(pixels):
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format="JPEG", quality=95)
    return encoded.getvalue()


def decoded_file(path):
    """The file's pixels as PIL alone reads them, RGB."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def count_preparations(monkeypatch):
    calls = []
    write = dataset_module._write_array_record
    monkeypatch.setattr(
        dataset_module, "_write_array_record", lambda builder: calls.append(1) or write(builder)
    )
    return calls


def prepared_copies(data_dir):
    return sorted(os.listdir(data_dir / "imagefolder"))


@pytest.mark.parametrize("split", ["train", "test"])
def test_truncated_jpeg_is_named_then_fixed_in_place_is_prepared_again(tmp_path, split):
    # train/: met by the statistics sample; test/: by the end-of-file check while records are
    # written. Either way preparation fails naming the file, and the fixed file is used next.
    root = tmp_path / "f"
    write_image_folder(root, ["a", "b"], {"train": 2, "test": 1}, (8, 10))
    cut = root / split / "b" / "cut.jpg"
    whole = jpeg_bytes(np.random.default_rng(1).integers(0, 256, (8, 10, 3), dtype=np.uint8))
    cut.write_bytes(whole[:-69])  # a partial copy
    with pytest.raises(DatasetError) as failure:
        load_folder(root, tmp_path / "data")
    message = str(failure.value)
    assert "\n" not in message
    assert f"cannot decode image {cut} (" in message and "re-copy or remove it" in message

    cut.write_bytes(whole)
    dataset = load_folder(root, tmp_path / "data")
    source = dataset.train_source if split == "train" else dataset.test_source
    (record,) = [r for r in source if r["file_name"].decode() == f"{split}/b/cut.jpg"]
    np.testing.assert_array_equal(record["image"], decoded_file(cut))


@pytest.mark.parametrize("in_memory", [True, False])
def test_image_failing_only_at_read_time_is_named(tmp_path, monkeypatch, in_memory):
    # Its header and last bytes are whole, so preparation stores it without decoding; the read
    # that decodes it names the file, whether that is when the split opens or a batch meets it.
    if not in_memory:
        monkeypatch.setattr(dataset_module, "IN_MEMORY_MAX_BYTES", 0)
    root = tmp_path / "f"
    write_image_folder(root, ["a"], {"train": 1, "test": 1}, (8, 10))
    whole = jpeg_bytes(np.random.default_rng(1).integers(0, 256, (8, 10, 3), dtype=np.uint8))
    damaged = root / "test" / "a" / "hole.jpg"
    scan = whole.index(b"\xff\xda") + 20  # inside the scan: a frame marker breaks the stream
    damaged.write_bytes(whole[:scan] + b"\xff\xc0\x00\x02" + whole[scan + 4 :])
    with pytest.raises(DatasetError) as failure:
        dataset = load_folder(root, tmp_path / "data")
        list(dataset.test_source)
    message = str(failure.value)
    assert "\n" not in message
    assert f"cannot decode image {damaged} (" in message and "re-copy or remove it" in message


def test_file_edited_in_place_gets_a_fresh_copy(tmp_path, monkeypatch):
    # Same name, same size (uncompressed PNGs of one shape), new pixels: only the modification
    # time tells, set here a second later so that no timestamp granularity can hide it.
    root = tmp_path / "f"
    write_image_folder(root, ["a", "b"], {"train": 2, "test": 1}, (8, 10))
    edited = root / "train" / "a" / "edit.png"
    old_pixels, new_pixels = np.random.default_rng(2).integers(0, 256, (2, 8, 10, 3), np.uint8)
    Image.fromarray(old_pixels).save(edited, compress_level=0)
    load_folder(root, tmp_path / "data")
    before = os.stat(edited)
    Image.fromarray(new_pixels).save(edited, compress_level=0)
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert os.stat(edited).st_size == before.st_size
    dataset = load_folder(root, tmp_path / "data")
    (record,) = [r for r in dataset.train_source if r["file_name"].decode() == "train/a/edit.png"]
    np.testing.assert_array_equal(record["image"], new_pixels)
    np.testing.assert_array_equal(record["image"], decoded_file(edited))
    assert len(prepared_copies(tmp_path / "data")) == 2


def test_unchanged_folder_is_not_prepared_again(small_folder, tmp_path, monkeypatch):
    calls = count_preparations(monkeypatch)
    root, _ = small_folder
    load_folder(root, tmp_path / "data")
    (copy,) = prepared_copies(tmp_path / "data")
    info_file = tmp_path / "data" / "imagefolder" / copy / "1.0.0" / "dataset_info.json"
    written_at = os.stat(info_file).st_mtime_ns
    for _ in range(2):
        assert load_folder(root, tmp_path / "data").info.num_train == 12
    assert len(calls) == 1
    assert prepared_copies(tmp_path / "data") == [copy]
    assert os.stat(info_file).st_mtime_ns == written_at


def test_added_image_is_picked_up_and_removing_it_reuses_the_first_copy(
    tmp_path, monkeypatch, caplog
):
    calls = count_preparations(monkeypatch)
    root = tmp_path / "f"
    write_image_folder(root, ["a", "b"], {"train": 2, "test": 1}, (8, 8))
    assert load_folder(root, tmp_path / "data").info.num_train == 4
    (first,) = prepared_copies(tmp_path / "data")
    added = root / "train" / "a" / "added.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(added)
    with caplog.at_level("WARNING", logger=dataset_module.__name__):
        assert load_folder(root, tmp_path / "data").info.num_train == 5
    # The earlier copy stays (a run may be reading it) and the warning says where it is.
    assert str(tmp_path / "data" / "imagefolder" / first) in caplog.text
    added.unlink()
    assert load_folder(root, tmp_path / "data").info.num_train == 4
    assert len(calls) == 2
    assert len(prepared_copies(tmp_path / "data")) == 2


def test_file_changed_during_preparation_stops_it(tmp_path, monkeypatch):
    # The copy would otherwise hold a state its name does not stand for; nothing is left of it,
    # and the next load prepares the folder's new state.
    root = tmp_path / "f"
    write_image_folder(root, ["a", "b"], {"train": 2, "test": 1}, (8, 8))
    changing = root / "test" / "b" / "00.png"
    summary = imagefolder_module.image_size_summary

    def change_then_summarize(paths):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(changing)
        return summary(paths)

    monkeypatch.setattr(imagefolder_module, "image_size_summary", change_then_summarize)
    with pytest.raises(DatasetError, match=f"image {changing} changed while its folder was being"):
        load_folder(root, tmp_path / "data")
    monkeypatch.setattr(imagefolder_module, "image_size_summary", summary)
    dataset = load_folder(root, tmp_path / "data")
    (record,) = [r for r in dataset.test_source if r["file_name"].decode() == "test/b/00.png"]
    np.testing.assert_array_equal(record["image"], np.zeros((8, 8, 3), np.uint8))


def test_fingerprint_follows_sizes_and_modification_times(small_folder):
    listing = scan_image_folder(str(small_folder[0]))
    path = listing.files["test"][0][0]
    size, mtime_ns = listing.stamps[path]
    for stamp in [(size + 1, mtime_ns), (size, mtime_ns + 1)]:
        changed = dataclasses.replace(listing, stamps={**listing.stamps, path: stamp})
        assert folder_fingerprint(changed) != folder_fingerprint(listing)
    assert folder_fingerprint(scan_image_folder(str(small_folder[0]))) == folder_fingerprint(
        listing
    )

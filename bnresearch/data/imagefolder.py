"""TFDS builder for a local image folder: ``PATH/train/<class>/*`` and ``PATH/test/<class>/*``.

Classes are the sorted subfolder names of train/; test/ must have the same set. Images are
.jpg/.jpeg/.png files (any case); names starting with '.' are ignored. The encoded bytes are
stored unchanged and decoded, as RGB, while batches are made, so ImageNet-sized folders cost
their file size on disk and no decoding at preparation beyond a statistics sample.

Each folder gets its own builder config, named by the folder's base name and a hash of its
absolute path and sorted file list: another folder, or files added, removed or renamed, get a
fresh copy. Files edited in place under the same name are not detected.
"""
import dataclasses
import hashlib
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, UnidentifiedImageError

from bnresearch.data.catalog import IMAGEFOLDER_PREFIX, DatasetError, check_dataset_name
from bnresearch.data.images import IMAGE_FORMATS, channel_mean_std, decode_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")
# Mean/std come from at most this many train images, evenly spaced in sorted order: decoding
# all of an ImageNet-sized folder would take hours and moves the statistics by < 0.01.
STATS_MAX_IMAGES = 10_000
FINGERPRINT_LENGTH = 12


@dataclasses.dataclass(frozen=True)
class FolderListing:
    """The labelled image files of a folder; paths are relative to ``root`` (absolute)."""

    root: str
    classes: tuple[str, ...]
    files: dict[str, tuple[tuple[str, int], ...]]  # split -> ((relative path, label), ...)


def _visible_entries(directory: str) -> list[os.DirEntry]:
    with os.scandir(directory) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _class_names(split_dir: str) -> tuple[str, ...]:
    return tuple(entry.name for entry in _visible_entries(split_dir) if entry.is_dir())


def _image_names(class_dir: str) -> list[str]:
    return [
        entry.name
        for entry in _visible_entries(class_dir)
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    ]


def scan_image_folder(folder: str) -> FolderListing:
    """Lists the classes and images of ``folder``; raises DatasetError if it cannot be a dataset."""
    check_dataset_name(IMAGEFOLDER_PREFIX + folder)
    root = os.path.abspath(folder)
    classes = _class_names(os.path.join(root, "train"))
    if not classes:
        raise DatasetError(f"image folder {root} has no class subfolders in train/")
    test_classes = _class_names(os.path.join(root, "test"))
    if set(test_classes) != set(classes):
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise DatasetError(
            f"image folder {root}: test/ classes differ from train/ classes"
            f" (only in train/: {only_train}; only in test/: {only_test})"
        )
    images = {
        (split, name): _image_names(os.path.join(root, split, name))
        for split in SPLITS
        for name in classes
    }
    empty = [name for name in classes if not images["train", name]]
    if empty:
        raise DatasetError(f"image folder {root}: train/ classes without .jpg/.jpeg/.png images: {empty}")
    files = {
        split: tuple(
            (f"{split}/{name}/{image}", label)
            for label, name in enumerate(classes)
            for image in images[split, name]
        )
        for split in SPLITS
    }
    return FolderListing(root, classes, files)


def folder_fingerprint(listing: FolderListing) -> str:
    """A short hash of the absolute path and the sorted relative file paths."""
    digest = hashlib.sha256(listing.root.encode())
    for split in SPLITS:
        for path, _ in listing.files[split]:
            digest.update(b"\n" + path.encode())
    return digest.hexdigest()[:FINGERPRINT_LENGTH]


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
    """One folder: its absolute path and class names (kept here so loading needs no rescan)."""

    folder: str = ""
    classes: tuple[str, ...] = dataclasses.field(default=(), repr=False)


def image_folder_config(listing: FolderListing) -> ImageFolderConfig:
    """The builder config of a listed folder, named '<base name>_<fingerprint>'."""
    base_name = re.sub(r"[^a-z0-9]+", "_", os.path.basename(listing.root).lower()).strip("_")
    return ImageFolderConfig(
        name=f"{base_name or 'folder'}_{folder_fingerprint(listing)}",
        description=f"Images of {listing.root}",
        folder=listing.root,
        classes=listing.classes,
    )


def image_size_summary(paths: list[str]) -> tuple[int, list[int] | None]:
    """(smallest side over all images, [height, width] if all images share it else None).

    Reads only the file headers; raises DatasetError naming the first file that is not a JPEG
    or PNG image, whatever its extension says.
    """
    sizes = set()
    for path in paths:
        try:
            with Image.open(path, formats=IMAGE_FORMATS) as image:
                width, height = image.size
        except (UnidentifiedImageError, OSError) as err:
            raise DatasetError(f"cannot read image {path}: {err}") from err
        sizes.add((height, width))
    min_side = min(min(size) for size in sizes)
    return min_side, list(sizes.pop()) if len(sizes) == 1 else None


def evenly_spaced(items: list, count: int) -> list:
    """``count`` items spread evenly over the list (all of them if it is shorter)."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A local image folder as TFDS: image (encoded bytes as found), label, file_name.

    Records keep sorted (class, file name) order. metadata: 'mean'/'std' (RGB, x/255 units,
    from at most STATS_MAX_IMAGES train images), 'min_side' (smallest image side over both
    splits) and 'uniform_size' ([height, width] shared by all images, or None).
    """

    name = "imagefolder"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # See SklearnDigits.code_path: no download, so no checksums file to look for.
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=self.builder_config.classes),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The images are local.
        listing = scan_image_folder(self.builder_config.folder)
        absolute = {
            split: [os.path.join(listing.root, path) for path, _ in listing.files[split]]
            for split in SPLITS
        }
        min_side, uniform_size = image_size_summary(absolute["train"] + absolute["test"])
        sample = evenly_spaced(absolute["train"], STATS_MAX_IMAGES)
        mean, std = channel_mean_std(decode_image(_read_bytes(path), 3) for path in sample)
        self.info.metadata.update(mean=mean, std=std, min_side=min_side, uniform_size=uniform_size)
        return {split: self._generate_examples(listing.root, listing.files[split]) for split in SPLITS}

    def _generate_examples(self, root: str, files: tuple[tuple[str, int], ...]):
        for path, label in files:
            yield path, {"image": _read_bytes(os.path.join(root, path)), "label": label, "file_name": path}

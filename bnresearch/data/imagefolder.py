"""TFDS builder for a local image folder: ``PATH/train/<class>/*`` and ``PATH/test/<class>/*``.

Classes are the sorted subfolder names of train/; test/ must have the same set. Images are
.jpg/.jpeg/.png files (any case); names starting with '.' are ignored. The encoded bytes are
stored unchanged and decoded, as RGB, while batches are made, so ImageNet-sized folders cost
their file size on disk and no decoding at preparation beyond a statistics sample and the files
whose last bytes look cut short.

The prepared copy follows its source. Each folder state gets its own builder config, named by
the folder's base name and a hash of its absolute path and sorted file list with each file's
size and modification time (ns): a file added, removed, renamed, replaced or edited in place
gets a fresh copy at the next load, an unchanged folder reuses its copy. Preparation reads each
file against the size and time it was named by and stops if they changed, so a copy holds the
state its name says. Not seen: an edit that keeps both size and modification time (a tool that
sets the old time back); remove the prepared copy then.
"""

import dataclasses
import glob
import hashlib
import json
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from bnresearch.data.catalog import IMAGEFOLDER_PREFIX, DatasetError, check_dataset_name
from bnresearch.data.images import (
    IMAGE_FORMATS,
    channel_mean_std,
    decode_image,
    describe_decode_error,
    ends_as_complete,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")
# Mean/std come from at most this many train images, evenly spaced in sorted order: decoding
# all of an ImageNet-sized folder would take hours and moves the statistics by < 0.01.
STATS_MAX_IMAGES = 10_000
FINGERPRINT_LENGTH = 12
# Hashed first, so that copies named under an earlier scheme (paths only) are never reused.
FINGERPRINT_SCHEME = b"paths, sizes and mtime_ns"


@dataclasses.dataclass(frozen=True)
class FolderListing:
    """The labelled image files of a folder; paths are relative to ``root`` (absolute)."""

    root: str
    classes: tuple[str, ...]
    files: dict[str, tuple[tuple[str, int], ...]]  # split -> ((relative path, label), ...)
    stamps: dict[str, tuple[int, int]]  # relative path -> (size in bytes, st_mtime_ns)


def _visible_entries(directory: str) -> list[os.DirEntry]:
    with os.scandir(directory) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _class_names(split_dir: str) -> tuple[str, ...]:
    return tuple(entry.name for entry in _visible_entries(split_dir) if entry.is_dir())


def _stamp(status: os.stat_result) -> tuple[int, int]:
    return status.st_size, status.st_mtime_ns


def _images(class_dir: str) -> list[tuple[str, tuple[int, int]]]:
    """(name, stamp) of the class folder's images, sorted; a link counts as its target."""
    return [
        (entry.name, _stamp(entry.stat()))
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
        (split, name): _images(os.path.join(root, split, name))
        for split in SPLITS
        for name in classes
    }
    empty = [name for name in classes if not images["train", name]]
    if empty:
        raise DatasetError(
            f"image folder {root}: train/ classes without .jpg/.jpeg/.png images: {empty}"
        )
    files, stamps = {}, {}
    for split in SPLITS:
        split_files = []
        for label, name in enumerate(classes):
            for image, stamp in images[split, name]:
                relative = f"{split}/{name}/{image}"
                split_files.append((relative, label))
                stamps[relative] = stamp
        files[split] = tuple(split_files)
    return FolderListing(root, classes, files, stamps)


def folder_fingerprint(listing: FolderListing) -> str:
    """A short hash of the absolute path and of each file's relative path, size and mtime (ns),
    in sorted order."""
    digest = hashlib.sha256(FINGERPRINT_SCHEME + b"\n" + os.fsencode(listing.root))
    for split in SPLITS:
        for path, _ in listing.files[split]:
            size, mtime_ns = listing.stamps[path]
            digest.update(b"\n%s\0%d\0%d" % (os.fsencode(path), size, mtime_ns))
    return digest.hexdigest()[:FINGERPRINT_LENGTH]


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
    """One state of a folder: its absolute path, class names and the listing the name hashes
    (kept here so preparation reads exactly the files the name stands for)."""

    folder: str = ""
    classes: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    listing: FolderListing | None = dataclasses.field(default=None, repr=False)


def _config_base_name(root: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", os.path.basename(root).lower()).strip("_") or "folder"


def image_folder_config(listing: FolderListing) -> ImageFolderConfig:
    """The builder config of a listed folder, named '<base name>_<fingerprint>'."""
    return ImageFolderConfig(
        name=f"{_config_base_name(listing.root)}_{folder_fingerprint(listing)}",
        description=f"Images of {listing.root}",
        folder=listing.root,
        classes=listing.classes,
        listing=listing,
    )


def other_prepared_copies(data_dir: str, config: ImageFolderConfig) -> list[str]:
    """The prepared copies in ``data_dir`` of other states of the config's folder."""
    pattern = os.path.join(
        glob.escape(os.fspath(data_dir)), ImageFolder.name, f"{_config_base_name(config.folder)}_*"
    )
    copies = []
    for copy in sorted(glob.glob(pattern)):
        if os.path.basename(copy) == config.name:
            continue
        for info_file in glob.glob(os.path.join(glob.escape(copy), "*", "dataset_info.json")):
            try:
                with open(info_file, encoding="utf-8") as file:
                    info = json.load(file)
            except (OSError, ValueError):
                continue
            if info.get("configDescription") == config.description:
                copies.append(copy)
                break
    return copies


def decode_failure(path: str, err: Exception) -> str:
    """The one-line message for an image file that does not decode."""
    return (
        f"cannot decode image {path} ({describe_decode_error(err)}): it is damaged or cut short;"
        " re-copy or remove it, then launch again (the prepared copy follows the folder)"
    )


def _check_decodes(path: str, encoded: bytes) -> np.ndarray:
    try:
        return decode_image(encoded, 3)
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError...: all mean damage.
        raise DatasetError(decode_failure(path, err)) from err


def _read_listed(path: str, stamp: tuple[int, int]) -> bytes:
    """The file's bytes; raises DatasetError unless it still has the listed size and mtime."""
    try:
        with open(path, "rb") as file:
            encoded = file.read()
            status = os.fstat(file.fileno())
    except FileNotFoundError:
        status = None
    except OSError as err:
        raise DatasetError(
            f"cannot read image {path} ({describe_decode_error(err)}); make it readable or"
            " remove it, then launch again"
        ) from err
    if status is None or _stamp(status) != stamp or len(encoded) != stamp[0]:
        raise DatasetError(
            f"image {path} changed while its folder was being prepared; launch again once the"
            " folder is complete"
        )
    return encoded


def _decoded_images(listing: FolderListing, relative_paths: list[str]):
    for relative in relative_paths:
        path = os.path.join(listing.root, relative)
        yield _check_decodes(path, _read_listed(path, listing.stamps[relative]))


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
        except Exception as err:  # UnidentifiedImageError, OSError, SyntaxError...
            raise DatasetError(
                f"cannot read image {path} ({describe_decode_error(err)}): it is not a whole JPEG"
                " or PNG file; re-copy, convert or remove it, then launch again"
            ) from err
        sizes.add((height, width))
    min_side = min(min(size) for size in sizes)
    return min_side, list(sizes.pop()) if len(sizes) == 1 else None


def evenly_spaced(items: list, count: int) -> list:
    """``count`` items spread evenly over the list (all of them if it is shorter)."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


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
        # The listing the config's name was hashed from, not a new scan: the copy must hold
        # that state, and _read_listed stops if a file no longer matches it.
        listing = self.builder_config.listing
        absolute = {
            split: [os.path.join(listing.root, path) for path, _ in listing.files[split]]
            for split in SPLITS
        }
        min_side, uniform_size = image_size_summary(absolute["train"] + absolute["test"])
        sample = evenly_spaced([path for path, _ in listing.files["train"]], STATS_MAX_IMAGES)
        mean, std = channel_mean_std(_decoded_images(listing, sample))
        self.info.metadata.update(mean=mean, std=std, min_side=min_side, uniform_size=uniform_size)
        return {split: self._generate_examples(listing, split) for split in SPLITS}

    def _generate_examples(self, listing: FolderListing, split: str):
        for relative, label in listing.files[split]:
            path = os.path.join(listing.root, relative)
            encoded = _read_listed(path, listing.stamps[relative])
            # A file cut short (a partial copy) fails here, naming it, rather than when a batch
            # meets it; a whole file is not decoded, which would cost hours for ImageNet.
            if not ends_as_complete(encoded):
                _check_decodes(path, encoded)
            yield relative, {"image": encoded, "label": label, "file_name": relative}

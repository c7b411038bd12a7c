"""``load_dataset``: a dataset config in, a prepared dataset with its train and test sources out.

Preparation happens on first use and once per data dir (see ``prepare``). Reading prepared data
needs neither TensorFlow nor network: ``tfds`` data sources hand over the encoded images and
``images.decode_image`` decodes them with PIL. A split small enough (``IN_MEMORY_MAX_BYTES`` of
pixels: digits, MNIST, CIFAR) is decoded once, when the dataset is opened, and served from
memory; a larger one is decoded at each read, while batches are made.
"""

import dataclasses
import functools
import logging
import math
import os
from typing import Any, Sequence

import tensorflow_datasets as tfds

from bnresearch.data.augment import Augmentation, make_augmentation, parse_augment
from bnresearch.data.catalog import (
    AUGMENT_CHOICES,
    TFDS_DATASETS,
    DatasetError,
    DatasetSettings,
    TfdsDatasetSpec,
    imagefolder_path,
    resolve_data_dir,
)
from bnresearch.data.imagefolder import (
    ImageFolder,
    decode_failure,
    image_folder_config,
    other_prepared_copies,
    scan_image_folder,
)
from bnresearch.data.images import decode_image, describe_decode_error
from bnresearch.data.prepare import prepare_once
from bnresearch.data.subset import select

_log = logging.getLogger(__name__)

# An image folder whose smallest side is above this gets ImageNet-style augmentation by default.
SMALL_IMAGE_MAX_SIDE = 64
FILE_FORMAT = tfds.core.FileFormat.ARRAY_RECORD
# A split whose decoded pixels fit in this is decoded once and kept in memory (CIFAR-10's train
# split takes 150 MB): reading and decoding a small PNG costs more than a small model's train
# step on it, and would be paid again every epoch.
IN_MEMORY_MAX_BYTES = 512 * 2**20


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model and a training loop need to know about a dataset."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, C) of the batches the model sees
    num_train: int
    num_test: int


@dataclasses.dataclass(frozen=True)
class LoaderOptions:
    """How many processes and threads make batches, and how far ahead."""

    num_workers: int
    num_threads: int
    prefetch: int


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A prepared dataset and everything the pipeline needs to batch it.

    The sources hold records {'image': uint8 (H, W, channels), 'label': int, ...}, decoded;
    ``augmentation`` applies to the images, then per-channel ``mean``/``std`` (x/255 units)
    normalize.
    """

    info: DatasetInfo
    train_source: Sequence[dict[str, Any]]
    test_source: Sequence[dict[str, Any]]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: Augmentation
    loader: LoaderOptions


@dataclasses.dataclass(frozen=True)
class _PreparedData:
    """A builder with data on disk and the facts that decide augmentation and batch shape."""

    builder: tfds.core.DatasetBuilder
    test_split: str
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    auto_augment: str
    uniform_size: tuple[int, int] | None  # (H, W) shared by all images, None if sizes vary
    folder: str | None = None  # an image folder's absolute path, to name a file that fails


def load_dataset(dataset_config: Any) -> Dataset:
    """Prepares the configured dataset if needed (once per data dir) and opens its splits.

    Reads the fields of ``DatasetSettings.config_fields()``; raises DatasetError for a
    bad field, a folder that is not a dataset, or data that cannot be prepared here.
    """
    settings = DatasetSettings.from_config(dataset_config)
    prepared = _prepare(settings.name, resolve_data_dir(settings.data_dir))
    augment = ",".join(
        prepared.auto_augment if name == "auto" else name
        for name in parse_augment(settings.augment, AUGMENT_CHOICES)
    )
    augmentation = make_augmentation(
        augment,
        crop_padding=settings.crop_padding,
        image_size=settings.image_size,
        options=settings.augment_kwargs,
    )
    image_shape = _batch_image_shape(settings.name, augmentation, prepared)
    builder = prepared.builder
    all_classes = builder.info.features["label"].num_classes
    train_source, test_source = (
        select(
            source,
            _labels(source),
            tuple(settings.classes),
            settings.train_per_class if split == "train" else 0,
            all_classes,
            split,
        )
        for split, source in (
            ("train", _open_split(prepared, "train")),
            ("test", _open_split(prepared, prepared.test_split)),
        )
    )
    info = DatasetInfo(
        name=settings.name,
        num_classes=len(settings.classes) or all_classes,
        image_shape=image_shape,
        num_train=len(train_source),
        num_test=len(test_source),
    )
    loader = LoaderOptions(settings.num_workers, settings.num_threads, settings.prefetch)
    return Dataset(
        info,
        train_source,
        test_source,
        prepared.channels,
        tuple(prepared.mean),
        tuple(prepared.std),
        augmentation,
        loader,
    )


class _DecodingSource:
    """A split's records, each with its image decoded when it is read.

    An image that does not decode raises DatasetError naming it: for an image folder its file
    (``folder`` + the record's file_name), else the record and the prepared copy (``location``).
    """

    def __init__(
        self,
        records: Sequence[dict[str, Any]],
        channels: int,
        location: str,
        folder: str | None = None,
    ):
        self._records = records
        self._channels = channels
        self._location = location
        self._folder = folder

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._records[index]
        try:
            image = decode_image(record["image"], self._channels)
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError...: all damage.
            raise DatasetError(self._decode_failure(index, record, err)) from err
        return {**record, "image": image}

    def _decode_failure(self, index: int, record: dict[str, Any], err: Exception) -> str:
        file_name = record.get("file_name")
        if isinstance(file_name, bytes):
            file_name = file_name.decode(errors="replace")
        if self._folder is not None and file_name:
            return decode_failure(os.path.join(self._folder, file_name), err)
        return (
            f"cannot decode image {index}{f' ({file_name})' if file_name else ''} of"
            f" {self._location} ({describe_decode_error(err)}): the prepared copy is damaged;"
            " remove it to prepare it again"
        )

    def labels(self) -> list[int]:
        """Every record's label, read without decoding the images."""
        return [int(self._records[index]["label"]) for index in range(len(self))]

    def __iter__(self):  # array_record signals the end with ValueError, not IndexError
        return (self[index] for index in range(len(self)))


def _open_split(prepared: _PreparedData, split: str) -> Sequence[dict[str, Any]]:
    """The split's decoded records: in memory if they fit IN_MEMORY_MAX_BYTES, else read and
    decoded on demand (decoding then runs in the pipeline's threads or workers)."""
    # TFDS would decode with TensorFlow or keep each file's own mode; images.decode_image does
    # it with PIL, to the dataset's channels.
    encoded = prepared.builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    location = f"split {split!r} in {prepared.builder.data_dir}"
    records = _DecodingSource(encoded, prepared.channels, location, prepared.folder)
    if prepared.uniform_size is None:
        return records
    pixels = len(records) * math.prod(prepared.uniform_size) * prepared.channels
    if pixels > IN_MEMORY_MAX_BYTES:
        return records
    return list(records)


def _labels(source: Sequence[dict[str, Any]]) -> list[int]:
    """The labels of a split's records (decoded in memory, or read undecoded)."""
    if isinstance(source, _DecodingSource):
        return source.labels()
    return [int(record["label"]) for record in source]


def _batch_image_shape(
    name: str, augmentation: Augmentation, prepared: _PreparedData
) -> tuple[int, int, int]:
    if augmentation.output_size is not None:
        return (augmentation.output_size, augmentation.output_size, prepared.channels)
    if prepared.uniform_size is None:
        raise DatasetError(
            f"dataset {name!r} has images of differing sizes and augment {augmentation.name!r}"
            " keeps sizes, so they cannot be batched; use augment='resized_crop_flip'"
        )
    return (*prepared.uniform_size, prepared.channels)


def _prepare(name: str, data_dir: str) -> _PreparedData:
    folder = imagefolder_path(name)
    if folder is not None:
        return _prepare_imagefolder(folder, data_dir)
    if name == "digits":
        return _prepare_digits(data_dir)
    return _prepare_tfds(name, TFDS_DATASETS[name], data_dir)


def _write_array_record(builder: tfds.core.DatasetBuilder) -> None:
    builder.download_and_prepare(file_format=FILE_FORMAT)


def _prepare_digits(data_dir: str) -> _PreparedData:
    # Imported here, as only digits needs it (scikit-learn itself only when preparing them).
    from bnresearch.data.digits import SklearnDigits  # pylint: disable=import-outside-toplevel

    builder = prepare_once(lambda: SklearnDigits(data_dir=data_dir), _write_array_record)
    metadata = builder.info.metadata
    return _PreparedData(builder, "test", 1, metadata["mean"], metadata["std"], "none", (8, 8))


def _prepare_imagefolder(folder: str, data_dir: str) -> _PreparedData:
    # The config's name hashes the folder's file list, sizes and mtimes (see imagefolder): a
    # changed folder is a new variant, prepared under its own lock, and an unchanged one finds
    # its copy prepared.
    config = image_folder_config(scan_image_folder(folder))

    def prepare(builder: tfds.core.DatasetBuilder) -> None:
        _write_array_record(builder)
        # Copies of the folder's earlier states are left in place, not removed: a run started
        # before the change (a sweep's other points) may be reading one now, and a folder put
        # back as it was reuses its copy. Each costs the folder's size, so say where they are.
        stale = other_prepared_copies(data_dir, config)
        if stale:
            _log.warning(
                "Prepared copies of earlier states of %s remain in %s (each as large as the"
                " folder's images); remove them once no run reads them",
                config.folder,
                ", ".join(stale),
            )

    builder = prepare_once(lambda: ImageFolder(data_dir=data_dir, config=config), prepare)
    metadata = builder.info.metadata
    uniform_size = tuple(metadata["uniform_size"]) if metadata["uniform_size"] else None
    small = metadata["min_side"] <= SMALL_IMAGE_MAX_SIDE
    auto_augment = "crop_flip" if small else "resized_crop_flip"
    return _PreparedData(
        builder,
        "test",
        3,
        metadata["mean"],
        metadata["std"],
        auto_augment,
        uniform_size,
        folder=config.folder,
    )


def _prepare_tfds(name: str, spec: TfdsDatasetSpec, data_dir: str) -> _PreparedData:
    builder = prepare_once(
        lambda: tfds.builder(spec.tfds_name, data_dir=data_dir),
        functools.partial(_download_and_prepare, name=name, spec=spec, data_dir=data_dir),
    )
    formats = builder.info.available_file_formats()
    if FILE_FORMAT not in formats:
        raise DatasetError(
            f"dataset {name!r} in {data_dir} is stored as {sorted(f.value for f in formats)}, but"
            " random access needs array_record: convert it with `tfds convert_format` or use"
            " another data_dir"
        )
    height, width, channels = builder.info.features["image"].shape
    uniform_size = (height, width) if height and width else None
    return _PreparedData(
        builder, spec.test_split, channels, spec.mean, spec.std, spec.auto_augment, uniform_size
    )


def _download_and_prepare(
    builder: tfds.core.DatasetBuilder, *, name: str, spec: TfdsDatasetSpec, data_dir: str
) -> None:
    manual_dir = os.path.join(data_dir, "downloads", "manual")
    missing = [f for f in spec.manual_files if not os.path.exists(os.path.join(manual_dir, f))]
    if missing:
        raise DatasetError(
            f"dataset {name!r} is not prepared in {data_dir} and TFDS cannot download it: put"
            f" {' and '.join(missing)} (from image-net.org, after registering) in {manual_dir},"
            f" or copy {os.path.join(data_dir, spec.tfds_name)} from a machine where it is prepared"
        )
    _log.info(
        "Preparing %s in %s; without network TFDS retries downloads for minutes before failing",
        name,
        data_dir,
    )
    try:
        builder.download_and_prepare(file_format=FILE_FORMAT)
    except Exception as err:  # Network, checksum and disk errors all end the same way here.
        raise DatasetError(
            f"could not download and prepare dataset {name!r} in {data_dir}"
            f" ({type(err).__name__}: {_first_line(err)}); prepare it on a machine with network"
            f" (load_dataset there with the same name) and copy"
            f" {os.path.join(data_dir, spec.tfds_name)} here, or use 'digits' or 'imagefolder:PATH'"
        ) from err


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else "no message"

"""The datasets a config can name, and the dataset config fields, checked without touching data.

Names: ``digits`` (scikit-learn's 8x8 digits, prepared locally), the TFDS datasets in
``TFDS_DATASETS``, and ``imagefolder:PATH`` (a local ``PATH/{train,test}/<class>/*`` tree).

``check_dataset_name`` and ``DatasetSettings.from_config`` read no data (an imagefolder name
only checks that its folders exist), so the config check can call them before any compute.
"""

import dataclasses
import os
from typing import Any, Mapping

from bnresearch.data.augment import (
    AUGMENTATION_NAMES,
    check_options,
    option_defaults,
    parse_augment,
)
from bnresearch.errors import UsageError

IMAGEFOLDER_PREFIX = "imagefolder:"
AUGMENT_CHOICES = ("auto",) + AUGMENTATION_NAMES


class DatasetError(UsageError):
    """A dataset name, folder, config field or preparation step that cannot work."""


@dataclasses.dataclass(frozen=True)
class TfdsDatasetSpec:
    """What the catalog knows about a TFDS dataset before any of it is on disk.

    ``mean``/``std`` are per-channel statistics of the train split in x/255 units.
    """

    tfds_name: str
    test_split: str
    auto_augment: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    manual_files: tuple[str, ...] = ()


# Statistics: per-pixel population mean/std over each train split, the values in common use (the
# PyTorch MNIST example; ImageNet's are torchvision's). For CIFAR-10 these are the population std,
# not the often copied 0.2023/0.1994/0.2010; the CIFAR-10 JPEG subset in shared/ gives
# 0.4926/0.4828/0.4471 and 0.2457/0.2435/0.2611. Augmentation: a flip turns a digit into another
# glyph, so the digit datasets (SVHN included) get none.
TFDS_DATASETS = {
    "mnist": TfdsDatasetSpec("mnist", "test", "none", (0.1307,), (0.3081,)),
    "fashion_mnist": TfdsDatasetSpec("fashion_mnist", "test", "none", (0.2860,), (0.3530,)),
    "cifar10": TfdsDatasetSpec(
        "cifar10", "test", "crop_flip", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": TfdsDatasetSpec(
        "cifar100", "test", "crop_flip", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
    "svhn_cropped": TfdsDatasetSpec(
        "svhn_cropped", "test", "none", (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
    ),
    # ImageNet's test labels are not public: its validation split is the test split here.
    "imagenet2012": TfdsDatasetSpec(
        "imagenet2012",
        "validation",
        "resized_crop_flip",
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        manual_files=("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
    ),
}
LOCAL_DATASETS = ("digits",)
VALID_NAMES = LOCAL_DATASETS + tuple(TFDS_DATASETS) + (IMAGEFOLDER_PREFIX + "PATH",)


def imagefolder_path(name: str) -> str | None:
    """The folder an ``imagefolder:PATH`` name points to, or None for any other name."""
    if not name.startswith(IMAGEFOLDER_PREFIX):
        return None
    return name[len(IMAGEFOLDER_PREFIX) :]


def check_dataset_name(name: str) -> None:
    """Raises DatasetError unless ``name`` names a dataset (for imagefolder: an existing tree)."""
    folder = imagefolder_path(name)
    if folder is None:
        if name not in LOCAL_DATASETS and name not in TFDS_DATASETS:
            raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(VALID_NAMES)}")
        return
    if not folder:
        raise DatasetError(f"dataset {name!r} names no folder; write imagefolder:PATH")
    missing = [
        split for split in ("train", "test") if not os.path.isdir(os.path.join(folder, split))
    ]
    if missing:
        raise DatasetError(
            f"image folder {os.path.abspath(folder)} lacks "
            f"{' and '.join(f'{s}/' for s in missing)};"
            " it must hold train/<class>/* and test/<class>/* images"
        )


def resolve_data_dir(data_dir: str) -> str:
    """The absolute data dir; '' means TFDS's default ($TFDS_DATA_DIR, else
    ~/tensorflow_datasets)."""
    if not data_dir:
        data_dir = os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")
    return os.path.abspath(os.path.expanduser(data_dir))


@dataclasses.dataclass(frozen=True)
class DatasetSettings:
    """The validated dataset config fields.

    name: a catalog name. data_dir: where prepared data live ('' = TFDS default).
    augment: augmentation names, comma-separated, applied in order ('auto': the dataset's own
    recipe; see ``augment``). augment_kwargs: {augmentation: {option: value}}, every option of
    every augmentation at its default (``augment.option_defaults``); the blocks of
    augmentations not in ``augment`` are not used. crop_padding: zero padding of crop.
    image_size: output side of resized_crop. num_workers: grain worker processes.
    num_threads: threads reading and augmenting batches in each process (0: in the caller).
    prefetch: batches each process prepares ahead, at least num_threads.
    classes: the class indices kept, relabelled 0, 1, ... in this order (): all); train_per_class:
    the first N training examples of each kept class (0: all); see ``subset``.
    """

    name: str = "digits"
    data_dir: str = ""
    augment: str = "auto"
    augment_kwargs: Mapping[str, Mapping[str, Any]] = dataclasses.field(
        default_factory=option_defaults
    )
    crop_padding: int = 4
    image_size: int = 224
    num_workers: int = 0
    num_threads: int = 1
    prefetch: int = 2
    classes: tuple[int, ...] = ()
    train_per_class: int = 0

    @classmethod
    def config_fields(cls) -> tuple[str, ...]:
        """The fields of the config's ``dataset`` block, which the schema generates from these
        (``bnresearch/registered_options.py``)."""
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_config(cls, dataset_config: Any) -> "DatasetSettings":
        """Reads and checks every field of ``cls.config_fields()`` (a ConfigDict or dict)."""
        missing = [field for field in cls.config_fields() if field not in dataset_config]
        if missing:
            raise DatasetError(
                f"dataset config lacks {', '.join(missing)}; required fields:"
                f" {', '.join(cls.config_fields())}"
            )
        settings = cls(**{field: dataset_config[field] for field in cls.config_fields()})
        settings.check()
        return settings

    def check(self) -> None:
        """Raises DatasetError for any field outside its valid range."""
        check_dataset_name(self.name)
        if not isinstance(self.data_dir, str):
            raise DatasetError(
                f"dataset data_dir must be a string ('' = TFDS default), got {self.data_dir!r}"
            )
        try:
            parse_augment(self.augment, AUGMENT_CHOICES)
            check_options(self.augment_kwargs)
        except UsageError as err:
            raise DatasetError(str(err)) from None
        _check_int("crop_padding", self.crop_padding, minimum=0)
        _check_int("image_size", self.image_size, minimum=1)
        _check_int("num_workers", self.num_workers, minimum=0)
        _check_int("num_threads", self.num_threads, minimum=0)
        _check_int("prefetch", self.prefetch, minimum=0)
        classes = self.classes
        if not (
            isinstance(classes, (tuple, list))
            and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes)
            and len(set(classes)) == len(classes)
        ):
            raise DatasetError(
                f"dataset classes must be distinct class indices >= 0 ((): all), got {classes!r}"
            )
        _check_int("train_per_class", self.train_per_class, minimum=0)
        if self.prefetch < self.num_threads:
            # Grain runs at most prefetch reads at once; more threads would idle.
            raise DatasetError(
                f"dataset prefetch ({self.prefetch}) must be >= num_threads ({self.num_threads})"
            )


def _check_int(field: str, value: Any, *, minimum: int) -> None:
    # bool is an int subclass; True as a padding is a typo, not a request.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DatasetError(f"dataset {field} must be an integer >= {minimum}, got {value!r}")

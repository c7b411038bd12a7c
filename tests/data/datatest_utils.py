"""Helpers for the data tests: configs, generated image folders, in-memory labelled datasets."""

import ml_collections
import numpy as np
from PIL import Image

from bnresearch.data.augment import make_augmentation, option_defaults
from bnresearch.data.dataset import Dataset, DatasetInfo, LoaderOptions

# The fields of a config's dataset block, written out as the reference the tests compare with.
DATASET_FIELDS = (
    "name",
    "data_dir",
    "augment",
    "augment_kwargs",
    "crop_padding",
    "image_size",
    "num_workers",
    "num_threads",
    "prefetch",
    "classes",
    "train_per_class",
)


def make_config(name: str, data_dir: str, **overrides) -> ml_collections.ConfigDict:
    """A dataset config with every required field; ``overrides`` replace fields."""
    config = ml_collections.ConfigDict(
        {
            "name": name,
            "data_dir": data_dir,
            "augment": "auto",
            "augment_kwargs": option_defaults(),
            "crop_padding": 4,
            "image_size": 224,
            "num_workers": 0,
            "num_threads": 0,
            "prefetch": 0,
            "classes": (),
            "train_per_class": 0,
        }
    )
    config.update(overrides)
    return config


def write_image_folder(root, classes, images_per_class, size, *, seed=0, test_classes=None):
    """Writes root/{train,test}/<class>/NN.png with random RGB pixels; returns
    {relative path: pixels}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, per_class in images_per_class.items():
        for name in test_classes if split == "test" and test_classes is not None else classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                relative = f"{split}/{name}/{index:02d}.png"
                Image.fromarray(pixels).save(root / relative)
                written[relative] = pixels
    return written


def labelled_dataset(num_examples, *, size=(6, 5), channels=3, augment="none", seed=0, **loader):
    """An in-memory Dataset whose record i has label i, for checking order and coverage."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_examples, *size, channels), dtype=np.uint8)
    records = [{"image": image, "label": np.int64(i)} for i, image in enumerate(images)]
    augmentation = make_augmentation(augment, crop_padding=2, image_size=4)
    shape = (4, 4, channels) if augmentation.output_size else (*size, channels)
    options = {"num_workers": 0, "num_threads": 0, "prefetch": 0, **loader}
    return Dataset(
        info=DatasetInfo("labelled", num_examples, shape, num_examples, num_examples),
        train_source=records,
        test_source=records,
        channels=channels,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        augmentation=augmentation,
        loader=LoaderOptions(**options),
    ), images

"""Datasets, augmentation and input pipelines.

Public API (re-exported here):
- ``check_dataset_name(name)``: cheap check of a config's dataset name (``catalog``).
- ``load_dataset(dataset_config) -> Dataset``: prepares once, then opens the splits (``dataset``).
- ``make_train_iterator`` / ``make_eval_iterator`` / ``make_statistics_iterator``: grain
  pipelines (``pipeline``).
Also: ``augment`` (named, composable augmentations, pure NumPy/PIL) and the TFDS builders for
locally prepared data, ``digits`` and ``imagefolder``.

Importing the package loads TFDS and grain (and through grain, JAX), but not TensorFlow.
"""

from bnresearch.data.catalog import DatasetError, DatasetSettings, check_dataset_name
from bnresearch.data.dataset import Dataset, DatasetInfo, load_dataset
from bnresearch.data.pipeline import (
    make_eval_iterator,
    make_statistics_iterator,
    make_train_iterator,
)

__all__ = [
    "Dataset",
    "DatasetError",
    "DatasetInfo",
    "DatasetSettings",
    "check_dataset_name",
    "load_dataset",
    "make_eval_iterator",
    "make_statistics_iterator",
    "make_train_iterator",
]

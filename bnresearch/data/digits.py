"""TFDS builder for scikit-learn's 8x8 handwritten digits: a real dataset that needs no network.

``sklearn.datasets.load_digits`` ships 1797 images (the UCI optdigits test set) with pixel values
0..16. The builder writes them once, with a fixed split, as an array_record TFDS dataset.
"""

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from bnresearch.data.images import channel_mean_std

DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0
DIGITS_MAX_VALUE = 16


def digits_split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) row indices: stratified by label, 360 test rows, random_state 0."""
    from sklearn.model_selection import train_test_split  # 3 s to import; needed once, to prepare

    train, test = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_SIZE,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    return np.sort(train), np.sort(test)


def digits_to_uint8(values: np.ndarray) -> np.ndarray:
    """Pixel values 0..16 -> uint8 0..255 as np.rint(v * 255 / 16) (so 8 -> 128, 16 -> 255)."""
    return np.rint(values * (255 / DIGITS_MAX_VALUE)).astype(np.uint8)


class SklearnDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """scikit-learn's 8x8 digits as TFDS: image uint8 (8, 8, 1) PNG, label 0..9.

    Split: ``sklearn.model_selection.train_test_split`` of the 1797 rows, stratified by label,
    test_size=360, random_state=0: 1437 train, 360 test. Records keep scikit-learn's row order
    within each split. Pixels: np.rint(v * 255 / 16) of scikit-learn's 0..16 values.
    metadata: 'mean' and 'std', per channel in x/255 units, over the train split.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # TFDS looks for a checksums file beside a builder's code (through `importlib_resources`).
    # This builder downloads nothing, so there is no checksums file to look for.
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: scikit-learn ships the data.
        from sklearn.datasets import load_digits  # 3 s to import; needed once, to prepare

        digits = load_digits()
        images = digits_to_uint8(digits.images)[..., np.newaxis]
        train, test = digits_split_indices(digits.target)
        mean, std = channel_mean_std(images[train])
        self.info.metadata.update(mean=mean, std=std)
        return {
            "train": self._generate_examples(images, digits.target, train),
            "test": self._generate_examples(images, digits.target, test),
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray, rows: np.ndarray):
        for row in rows:
            # A PIL image makes TFDS encode the PNG with PIL instead of TensorFlow.
            yield (
                int(row),
                {"image": Image.fromarray(images[row, :, :, 0]), "label": int(labels[row])},
            )

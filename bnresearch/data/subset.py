"""Part of a dataset: some of its classes, and a number of training examples per class.

``dataset.classes`` keeps the classes it lists, in its order, relabelled 0, 1, ... (so
``classes=(5, 6, 7, 8, 9)`` of CIFAR-10 is a 5-class dataset whose class 0 is the original 5), in
both splits;
``dataset.train_per_class`` = N keeps the first N training examples of each kept class in the
prepared split's order (which preparation fixes, by a hash of each example's key): a fixed subset,
the same for every seed and run. The test split keeps every example of the kept classes. Transfer
studies use it to pretrain on some classes and fine-tune on few examples of the others.
"""

from collections.abc import Sequence
from typing import Any

from bnresearch.data.catalog import DatasetError


class Subset(Sequence):
    """The records of `source` at `indices`, their labels mapped by `relabel`."""

    def __init__(self, source: Sequence[dict[str, Any]], indices: list[int], relabel: dict):
        self._source, self._indices, self._relabel = source, indices, relabel

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._source[self._indices[index]]
        return {**record, "label": self._relabel[int(record["label"])]}


def select(
    source: Sequence[dict[str, Any]],
    labels: Sequence[int],
    classes: tuple[int, ...],
    per_class: int,
    num_classes: int,
    split: str,
) -> Sequence[dict[str, Any]]:
    """The examples of `source` (whose labels are `labels`) in `classes` (all for ()), at most
    the first `per_class` of each (all for 0); DatasetError for a class the dataset lacks or
    one with fewer than `per_class` examples."""
    if not classes and not per_class:
        return source
    kept = tuple(classes) or tuple(range(num_classes))
    outside = [c for c in kept if not 0 <= c < num_classes]
    if outside:
        raise DatasetError(
            f"dataset classes {outside} do not exist; the dataset has classes 0 to "
            f"{num_classes - 1}"
        )
    relabel = {original: new for new, original in enumerate(kept)}
    taken = {original: 0 for original in kept}
    indices = []
    for index, label in enumerate(labels):
        label = int(label)
        if label in taken and (not per_class or taken[label] < per_class):
            taken[label] += 1
            indices.append(index)
    short = {label: count for label, count in taken.items() if per_class and count < per_class}
    if short:
        raise DatasetError(
            f"dataset train_per_class={per_class}, but the {split} split holds only "
            + ", ".join(f"{count} of class {label}" for label, count in short.items())
        )
    return Subset(source, indices, relabel)

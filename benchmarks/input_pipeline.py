"""The input pipeline's throughput through `bnresearch.data`, as a run reads its training data:
`load_dataset` (prepare once into the data dir, open the splits), then `make_train_iterator`
(shuffle, read, decode where the split is not held decoded in memory, augment, normalize, batch)
with the dataset config's default loader settings (num_workers, num_threads, prefetch).
"""

import dataclasses
import statistics
import time

from bnresearch import data
from bnresearch.config.defaults import base_config

SEED = 0


@dataclasses.dataclass(frozen=True)
class PipelineResult:
    dataset: str
    batch_size: int
    augment: str
    image_shape: tuple[int, int, int]
    load_s: float  # load_dataset: preparing (first use of the data dir) and opening the splits
    images_per_s: list[float]  # one per repeat

    @property
    def median(self) -> float:
        return statistics.median(self.images_per_s)


def measure_pipeline(
    name: str, data_dir: str, *, batch_size: int, batches: int, repeats: int, warmup: int
) -> PipelineResult:
    """Images/s of the training iterator of dataset `name` (a catalog name such as 'digits', or
    'imagefolder:PATH'): `batches` batches per repeat, after `warmup` batches that fill the
    prefetch buffer and start its threads."""
    config = base_config().dataset
    config.name = name
    config.data_dir = data_dir
    start = time.perf_counter()
    dataset = data.load_dataset(config)
    load_s = time.perf_counter() - start
    iterator = data.make_train_iterator(dataset, seed=SEED, batch_size=batch_size)
    for _ in range(warmup):
        next(iterator)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        rates.append(batches * batch_size / (time.perf_counter() - start))
    return PipelineResult(
        dataset=name,
        batch_size=batch_size,
        augment=dataset.augmentation.name,
        image_shape=tuple(dataset.info.image_shape),
        load_s=load_s,
        images_per_s=rates,
    )

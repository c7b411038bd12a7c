"""Grain pipelines: an endless, checkpointable train iterator and a padded, masked eval pass.

Train order. One global stream for all processes: epoch e is permutation e of the train split
(grain reseeds its shuffle each epoch), epochs follow each other without gaps, and example
position i is augmented with a generator seeded by (seed, i, copy). Global batch k is positions
[k*B, (k+1)*B); process p takes the contiguous slice [k*B + p*b, k*B + (p+1)*b), b = B/P. So
concatenating the processes' batch k in process order gives the 1-process batch k exactly, same
order and same augmentation, and the stream does not depend on num_workers or num_threads.
Batches run across epoch boundaries: every B consecutive positions form a batch.

Batch-size changes (Smith et al., "Don't Decay the Learning Rate, Increase the Batch Size", 2018,
arXiv:1711.00489): from global batch k_1 on, batches hold B_1 positions, and so on. The stream
goes on where it was: the first batch of size B_1 starts at position k_1 * B, so positions stay a
pure function of the batch index and an iterator restored anywhere continues exactly.

Batch augmentation (Hoffer et al., "Augment your batch: better training with larger batches",
2019, arXiv:1901.09335): with multiplicity M every position yields M copies augmented with the
generators of (seed, i, 0) .. (seed, i, M-1), next to each other in the batch, so a batch of B
positions holds M*B images (labels repeated) and copy 0 is the image of multiplicity 1.

Mixing (mixup, CutMix; ``augment.MIXINGS``) mixes each local batch once it is stacked and
normalized, with a generator seeded by (mix seed, global batch index, process index), so its
lambda and its pairing are a pure function of the stream position too and a restored iterator
goes on exactly. Pairs are drawn within a process's batch (with M
copies, over all M*b images): the mixed stream depends on the process count, unlike the rest.
A mixed batch gains 'mix_label' (int32, the partner's label) and 'mix_weight' (float32, the
weight of 'label' in the targets); without mixing, batches are exactly as they were before it.

Eval order. The test split in record order, padded to a whole number of global batches with
zero images (label 0, mask 0.0) and split across processes the same way.
"""

import math
from typing import Sequence

import grain
import numpy as np
from absl import flags

from bnresearch.data.augment import normalize
from bnresearch.data.dataset import Dataset, LoaderOptions


def local_batch_size(batch_size: int, process_index: int, process_count: int) -> int:
    """The per-process batch; raises ValueError unless the processes split it evenly."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index must be in [0, process_count), got {process_index} of {process_count}"
        )
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(
            f"batch_size {batch_size} must be a positive multiple of process_count {process_count}"
        )
    return batch_size // process_count


def derive_mix_seed(seed: int) -> int:
    """The 32-bit seed of the batch mixing: the third word hashed from ``seed``, after the two of
    ``derive_seeds``. Not the augmentation seed: (augment seed, k, p) would seed batch k's mixing
    as the generator of copy p of position k."""
    return int(np.random.SeedSequence(seed).generate_state(3)[2])


def derive_seeds(seed: int) -> tuple[int, int]:
    """(shuffle seed, augmentation seed), both 32-bit, hashed from ``seed``.

    Grain shuffles epoch e with seed + e, so raw seeds s and s + 1 would replay each other's
    epochs shifted by one; hashing makes neighbouring seeds unrelated.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    shuffle_seed, augment_seed = np.random.SeedSequence(seed).generate_state(2)
    return int(shuffle_seed), int(augment_seed)


class _TrainExample:
    """(position, record) -> its M augmented uint8 copies, stacked: {'image': (M, H, W, C),
    'label': (M,)}. Copy c is augmented with a generator seeded by (seed, position, c)."""

    def __init__(self, dataset: Dataset, augment_seed: int, multiplicity: int):
        self._augment = dataset.augmentation.train
        self._seed = augment_seed
        self._multiplicity = multiplicity

    def __call__(self, position: int, record: dict) -> dict:
        copies = [
            self._augment(record["image"], np.random.default_rng((self._seed, position, copy)))
            for copy in range(self._multiplicity)
        ]
        return {
            "image": np.stack(copies),
            "label": np.full(self._multiplicity, record["label"], np.int32),
        }


class _EvalExample:
    """Record -> eval-transformed uint8 example with mask 1."""

    def __init__(self, dataset: Dataset):
        self._transform = dataset.augmentation.eval

    def __call__(self, record: dict) -> dict:
        return {
            "image": self._transform(record["image"]),
            "label": np.int32(record["label"]),
            "mask": np.float32(1),
        }


class _PaddingExample:
    """A zero image with label 0 and mask 0, filling the last eval batch."""

    def __init__(self, dataset: Dataset):
        self._shape = dataset.info.image_shape

    def __call__(self, position: int) -> dict:
        del position
        return {
            "image": np.zeros(self._shape, np.uint8),
            "label": np.int32(0),
            "mask": np.float32(0),
        }


class _NormalizedBatch:
    """Stacks examples and normalizes the images once for the whole batch (vectorized).

    With ``copies``, examples hold stacked copies and the batch puts them one after another:
    (b, M, ...) -> (b * M, ...).
    """

    def __init__(self, dataset: Dataset, copies: bool = False):
        self._mean = np.asarray(dataset.mean)
        self._std = np.asarray(dataset.std)
        self._copies = copies

    def __call__(self, examples: list[dict]) -> dict:
        join = np.concatenate if self._copies else np.stack
        batch = {key: join([example[key] for example in examples]) for key in examples[0]}
        batch["image"] = normalize(batch["image"], self._mean, self._std)
        return batch


class _MixedBatch:
    """(global batch index k, batch) -> the batch mixed by ``mix`` with a generator seeded by
    (seed, k, process index), with 'mix_label' and 'mix_weight' added."""

    def __init__(self, mix, mix_seed: int, process_index: int):
        self._mix = mix
        self._seed = mix_seed
        self._process_index = process_index

    def __call__(self, index: int, batch: dict) -> dict:
        rng = np.random.default_rng((self._seed, index, self._process_index))
        images, partners, weights = self._mix(batch["image"], rng)
        return {
            **batch,
            "image": images,
            "mix_label": batch["label"][partners],
            "mix_weight": weights,
        }


def _parallel(batches: grain.MapDataset, loader: LoaderOptions) -> grain.IterDataset:
    # Threads overlap batch making with the training step (JAX, PIL and NumPy release the GIL);
    # worker processes split batches round-robin and grain interleaves them back in order.
    read_options = grain.ReadOptions(
        num_threads=loader.num_threads, prefetch_buffer_size=loader.prefetch
    )
    batches = batches.to_iter_dataset(read_options)
    if loader.num_workers:
        # Grain reads an absl flag when it starts workers and fails if the program did not parse
        # flags (only absl.app.run does); the defaults are what we want.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=loader.num_workers))
    return batches


def make_train_iterator(
    dataset: Dataset,
    *,
    seed: int,
    batch_size: int,
    batch_size_changes: Sequence[tuple[int, int]] = (),
    multiplicity: int = 1,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
    """Endless iterator of this process's {'image': float32 (b*M, H, W, C), 'label': int32 (b*M,)}
    and, when the dataset's augmentation mixes batches, 'mix_label' and 'mix_weight' (b*M,).

    b = batch_size // process_count positions (M copies each), and from global batch k on, for
    each (k, size) of ``batch_size_changes`` (increasing k), size // process_count. Deterministic
    given seed, the batch sizes, M and the process layout. ``get_state``/``set_state`` (and
    orbax's grain.checkpoint.CheckpointSave/Restore) resume exactly; the state's layout depends
    on num_workers, so resume with the same value.
    """
    sizes = ((0, batch_size), *batch_size_changes)
    for (first, _), (later, _) in zip(sizes, sizes[1:]):
        if later <= first:
            raise ValueError(
                f"batch_size_changes must start at increasing batches > 0, got "
                f"{later} after {first}"
            )
    if multiplicity < 1:
        raise ValueError(f"multiplicity must be a positive integer, got {multiplicity}")
    shuffle_seed, augment_seed = derive_seeds(seed)
    examples = (
        grain.MapDataset.source(dataset.train_source)
        .shuffle(seed=shuffle_seed)
        .repeat()
        .map_with_index(_TrainExample(dataset, augment_seed, multiplicity))
    )
    # One run of batches per batch size, each from the position where the previous one ended.
    # A run of B-position batches splits into P local batches per global batch, so process p
    # keeps every P-th local batch starting at p: its contiguous share of each global batch.
    runs, position = [], 0
    for (first, size), (end, _) in zip(sizes, (*sizes[1:], (None, None))):
        local = local_batch_size(size, process_index, process_count)
        stop = None if end is None else position + (end - first) * size
        runs.append(
            examples[position:stop].batch(
                local, drop_remainder=True, batch_fn=_NormalizedBatch(dataset, copies=True)
            )
        )
        position = stop
    batches = runs[0] if len(runs) == 1 else grain.MapDataset.concatenate(runs)
    # Process p's i-th local batch is its share of global batch i.
    batches = batches[process_index::process_count]
    if dataset.augmentation.mix is not None:
        batches = batches.map_with_index(
            _MixedBatch(dataset.augmentation.mix, derive_mix_seed(seed), process_index)
        )
    return iter(_parallel(batches, dataset.loader))


def make_eval_iterator(
    dataset: Dataset,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """An iterable of {'image', 'label', 'mask'} batches of batch_size // process_count.

    Each ``iter()`` is a fresh pass. Every process yields ceil(num_test / batch_size) batches;
    over all processes and batches each test example appears once with mask 1.0, and the
    padding of the last global batch has mask 0.0.
    """
    batch = local_batch_size(batch_size, process_index, process_count)
    num_examples = len(dataset.test_source)
    num_padding = math.ceil(num_examples / batch_size) * batch_size - num_examples
    examples = grain.MapDataset.concatenate(
        [
            grain.MapDataset.source(dataset.test_source).map(_EvalExample(dataset)),
            grain.MapDataset.range(num_padding).map(_PaddingExample(dataset)),
        ]
    )
    batches = examples.batch(batch, drop_remainder=True, batch_fn=_NormalizedBatch(dataset))
    return _parallel(batches[process_index::process_count], dataset.loader)


def make_statistics_iterator(
    dataset: Dataset,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """One pass over the training split as evaluation sees images (no augmentation), in order,
    in full batches of batch_size // process_count: the pass that re-estimates a normalization's
    population statistics. The last num_train mod batch_size examples are left out, so every
    batch's statistics are those of batch_size real images, as in training."""
    batch = local_batch_size(batch_size, process_index, process_count)
    examples = grain.MapDataset.source(dataset.train_source).map(_EvalExample(dataset))
    batches = examples.batch(batch, drop_remainder=True, batch_fn=_NormalizedBatch(dataset))
    # Whole global batches only: a process's share of a batch that the others lack is dropped.
    global_batches = len(dataset.train_source) // batch_size
    return _parallel(
        batches[: global_batches * process_count][process_index::process_count], dataset.loader
    )

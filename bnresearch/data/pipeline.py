"""Grain pipelines: an endless, checkpointable train iterator and a padded, masked eval pass.

Train order. One global stream for all processes: epoch e is permutation e of the train split
(grain's shuffle, reseeded each epoch; ``shuffle.epoch_permutation`` computes it), epochs follow
each other without gaps, and example position i is augmented with a generator seeded by
(seed, i, copy). Global batch k is positions [k*B, (k+1)*B); process p takes the contiguous
slice [k*B + p*b, k*B + (p+1)*b), b = B/P. So concatenating the processes' batch k in process
order gives the 1-process batch k exactly, same order and same augmentation, and the stream does
not depend on num_workers or num_threads.
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
import sys
from typing import Sequence

import grain
import numpy as np
from absl import flags

from bnresearch.data.augment import normalize
from bnresearch.data.dataset import Dataset, LoaderOptions
from bnresearch.data.shuffle import epoch_permutation


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


class _OrderedBatches(grain.MapDataset):
    """Process p's j-th of ``count`` local batches of ``local`` examples of ``source`` in record
    order: examples [(j P + p) local, (j P + p + 1) local), eval-transformed, with mask 1.
    Positions past the end of ``source`` are padding: zero images, label 0, mask 0.

    A batch per call: grain's per-example map and batch cost more than the eval transform of a
    small image (a digits eval pass took 11 ms that way, 1.2 ms this way).
    """

    def __init__(
        self,
        dataset: Dataset,
        source: Sequence[dict],
        *,
        local: int,
        count: int,
        process_index: int,
        process_count: int,
    ):
        super().__init__()
        self._source = source
        self._transform = dataset.augmentation.eval
        self._shape = dataset.info.image_shape
        self._mean, self._std = np.asarray(dataset.mean), np.asarray(dataset.std)
        self._local, self._count = local, count
        self._process_index, self._process_count = process_index, process_count

    def __len__(self) -> int:
        return self._count

    def __str__(self) -> str:
        return "_OrderedBatches"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        start = (index * self._process_count + self._process_index) * self._local
        records = [
            self._source[i] for i in range(start, min(start + self._local, len(self._source)))
        ]
        padding = self._local - len(records)
        images = [self._transform(record["image"]) for record in records]
        images += [np.zeros(self._shape, np.uint8)] * padding
        return {
            "image": normalize(np.stack(images), self._mean, self._std),
            "label": np.array([record["label"] for record in records] + [0] * padding, np.int32),
            "mask": np.repeat(np.float32([1, 0]), [len(records), padding]),
        }


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


class _TrainBatches(grain.MapDataset):
    """Process p's local batch k of the train stream (module docstring) at index k, endless.

    The order is grain's ``MapDataset.source(train).shuffle(shuffle seed).repeat()``. A whole
    batch is made per call, its records' order from a cached epoch permutation: passing each
    example through grain's shuffle, repeat, map and batch cost about 100 us an example on
    digits, mostly grain's index_shuffle call. Indices are batch indices, as they were then, so
    grain's iterator state ({'next_index': k}) and checkpoints written then still resume.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        seed: int,
        sizes: Sequence[tuple[int, int]],
        multiplicity: int,
        process_index: int,
        process_count: int,
    ):
        super().__init__()
        self._source = dataset.train_source
        self._train = dataset.augmentation.train
        self._random = dataset.augmentation.random
        self._mean, self._std = np.asarray(dataset.mean), np.asarray(dataset.std)
        self._shuffle_seed, self._augment_seed = derive_seeds(seed)
        self._multiplicity = multiplicity
        mix = dataset.augmentation.mix
        self._mix = None if mix is None else _MixedBatch(mix, derive_mix_seed(seed), process_index)
        # (first batch, first position of this process's share, local batch size, global
        # batch size) of each run of one batch size, latest first.
        runs, position = [], 0
        for (first, size), (end, _) in zip(sizes, (*sizes[1:], (None, None))):
            local = local_batch_size(size, process_index, process_count)
            runs.append((first, position + process_index * local, local, size))
            if end is not None:
                position += (end - first) * size
        self._runs = runs[::-1]
        self._permutations: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return sys.maxsize

    def __str__(self) -> str:
        return "_TrainBatches"

    def _record_indices(self, start: int, count: int) -> np.ndarray:
        """The train records at stream positions [start, start + count)."""
        length = len(self._source)
        epochs, offsets = np.divmod(np.arange(start, start + count), length)
        indices = np.empty(count, np.int64)
        for epoch in range(epochs[0], epochs[-1] + 1):
            here = epochs == epoch
            indices[here] = self._permutation(epoch)[offsets[here]]
        return indices

    def _permutation(self, epoch: int) -> np.ndarray:
        permutation = self._permutations.get(epoch)
        if permutation is None:
            # Grain's ShuffleMapDataset reseeds each epoch with seed + epoch.
            seed = (self._shuffle_seed + epoch) % 2**32
            permutation = epoch_permutation(len(self._source), seed)
            # A batch spans at most two epochs and threads work a few batches apart, so
            # neighbouring epochs are kept. The dict is replaced, never changed, so the other
            # threads' lookups stay safe.
            kept = {e: p for e, p in self._permutations.items() if abs(e - epoch) <= 1}
            self._permutations = {**kept, epoch: permutation}
        return permutation

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        first, start, local, size = next(run for run in self._runs if run[0] <= index)
        start += (index - first) * size
        records = [self._source[i] for i in self._record_indices(start, local)]
        images = [
            self._train(record["image"], self._generator(position, copy))
            for position, record in enumerate(records, start)
            for copy in range(self._multiplicity)
        ]
        labels = np.array([record["label"] for record in records], np.int32)
        batch = {
            "image": normalize(np.stack(images), self._mean, self._std),
            "label": np.repeat(labels, self._multiplicity),
        }
        return batch if self._mix is None else self._mix(index, batch)

    def _generator(self, position: int, copy: int) -> np.random.Generator | None:
        """Copy c of position i is augmented with the generator of (augment seed, i, c); a train
        transform that draws nothing gets none (seeding one costs 10 us)."""
        if not self._random:
            return None
        return np.random.default_rng((self._augment_seed, position, copy))


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
    batches = _TrainBatches(
        dataset,
        seed=seed,
        sizes=sizes,
        multiplicity=multiplicity,
        process_index=process_index,
        process_count=process_count,
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
    batches = _OrderedBatches(
        dataset,
        dataset.test_source,
        local=local_batch_size(batch_size, process_index, process_count),
        count=math.ceil(len(dataset.test_source) / batch_size),
        process_index=process_index,
        process_count=process_count,
    )
    return _parallel(batches, dataset.loader)


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
    batches = _OrderedBatches(
        dataset,
        dataset.train_source,
        local=local_batch_size(batch_size, process_index, process_count),
        # Whole global batches only: a process's share of a batch that the others lack is dropped.
        count=len(dataset.train_source) // batch_size,
        process_index=process_index,
        process_count=process_count,
    )
    return _parallel(batches, dataset.loader)

"""Train and eval pipelines: order, determinism, process shares, exact resume, full eval coverage.

Most tests use an in-memory dataset whose record i has label i, so labels identify examples.
"""

import itertools

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bnresearch.data.augment import normalize
from bnresearch.data.dataset import load_dataset
from bnresearch.data.pipeline import derive_seeds, make_eval_iterator, make_train_iterator
from tests.data.datatest_utils import labelled_dataset, make_config


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def assert_batches_equal(expected, actual):
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual):
        assert want.keys() == got.keys()
        for key in want:
            assert want[key].dtype == got[key].dtype
            np.testing.assert_array_equal(want[key], got[key])


def test_batches_have_the_promised_shapes_and_values():
    dataset, images = labelled_dataset(10)
    batch = next(make_train_iterator(dataset, seed=0, batch_size=4))
    assert batch["image"].shape == (4, 6, 5, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    # augment='none': each image is its record's pixels, normalized.
    expected = (images[batch["label"]] / 255 - 0.5) / 0.25
    np.testing.assert_allclose(batch["image"], expected, rtol=1e-6, atol=1e-6)


def test_each_epoch_is_a_new_permutation():
    dataset, _ = labelled_dataset(24)
    labels = np.concatenate(
        [b["label"] for b in take(make_train_iterator(dataset, seed=3, batch_size=8), 9)]
    )
    epochs = labels.reshape(3, 24)
    for epoch in epochs:
        assert sorted(epoch) == list(range(24))
    assert len({tuple(epoch) for epoch in epochs} | {tuple(range(24))}) == 4


def test_batches_cross_epoch_boundaries_without_losing_examples():
    dataset, _ = labelled_dataset(10)
    labels = np.concatenate(
        [b["label"] for b in take(make_train_iterator(dataset, seed=0, batch_size=4), 5)]
    )
    assert sorted(labels[:10]) == list(range(10)) and sorted(labels[10:]) == list(range(10))


def test_same_seed_same_batches_other_seed_other_batches():
    dataset, _ = labelled_dataset(16, augment="crop_flip")
    first = take(make_train_iterator(dataset, seed=5, batch_size=4), 8)
    assert_batches_equal(first, take(make_train_iterator(dataset, seed=5, batch_size=4), 8))
    other = take(make_train_iterator(dataset, seed=6, batch_size=4), 8)
    assert not np.array_equal(
        np.concatenate([b["label"] for b in first]), np.concatenate([b["label"] for b in other])
    )


def test_neighbouring_seeds_do_not_replay_each_other_one_epoch_later():
    # Grain shuffles epoch e with seed + e; raw seeds 0 and 1 would share permutations.
    dataset, _ = labelled_dataset(12)
    seed0 = np.concatenate(
        [b["label"] for b in take(make_train_iterator(dataset, seed=0, batch_size=12), 2)]
    )
    seed1 = np.concatenate(
        [b["label"] for b in take(make_train_iterator(dataset, seed=1, batch_size=12), 1)]
    )
    assert not np.array_equal(seed0[12:], seed1)


def test_augmentation_is_drawn_per_position():
    dataset, _ = labelled_dataset(4, size=(8, 8), augment="crop_flip")
    batches = take(make_train_iterator(dataset, seed=0, batch_size=4), 6)
    views_of_example_0 = {b["image"][list(b["label"]).index(0)].tobytes() for b in batches}
    assert len(views_of_example_0) > 1


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shares_concatenate_to_the_single_process_batch(process_count):
    dataset, _ = labelled_dataset(20, size=(8, 8), augment="crop_flip")
    single = take(make_train_iterator(dataset, seed=1, batch_size=8), 6)
    shares = [
        take(
            make_train_iterator(
                dataset, seed=1, batch_size=8, process_index=p, process_count=process_count
            ),
            6,
        )
        for p in range(process_count)
    ]
    for step, whole in enumerate(single):
        parts = [share[step] for share in shares]
        labels = [part["label"] for part in parts]
        assert all(len(part) == 8 // process_count for part in labels)
        assert not set(labels[0]) & set(labels[1])  # disjoint (within a batch, labels are unique)
        # Same examples, same order, same augmentation as the single-process batch.
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), whole[key])


def test_batch_size_must_split_evenly_over_processes():
    dataset, _ = labelled_dataset(8)
    with pytest.raises(
        ValueError, match="batch_size 6 must be a positive multiple of process_count 4"
    ):
        make_train_iterator(dataset, seed=0, batch_size=6, process_count=4)
    with pytest.raises(
        ValueError, match="batch_size 6 must be a positive multiple of process_count 4"
    ):
        make_eval_iterator(dataset, batch_size=6, process_count=4)
    with pytest.raises(ValueError, match="process_index must be in"):
        make_train_iterator(dataset, seed=0, batch_size=4, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        make_train_iterator(dataset, seed=-1, batch_size=4)


# Every augmentation but the resizing one, in one composition.
EVERY_AUGMENTATION = "crop_flip,translate,rotate,gaussian_noise,cutout,random_erasing,color_jitter"


@pytest.mark.parametrize("augment", ["crop_flip", EVERY_AUGMENTATION])
def test_state_resumes_exactly(augment):
    dataset, _ = labelled_dataset(10, size=(8, 8), augment=augment, num_threads=2, prefetch=3)
    iterator = make_train_iterator(dataset, seed=2, batch_size=4)
    take(iterator, 5)
    state = iterator.get_state()
    expected = take(iterator, 3)
    fresh = make_train_iterator(dataset, seed=2, batch_size=4)
    fresh.set_state(state)
    assert_batches_equal(expected, take(fresh, 3))


def test_orbax_checkpoint_of_the_iterator_resumes_exactly(tmp_path):
    dataset, _ = labelled_dataset(10, size=(8, 8), augment="crop_flip")
    iterator = make_train_iterator(dataset, seed=2, batch_size=4)
    take(iterator, 5)
    with ocp.CheckpointManager(tmp_path) as manager:
        manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
    expected = take(iterator, 3)
    fresh = make_train_iterator(dataset, seed=2, batch_size=4)
    with ocp.CheckpointManager(tmp_path) as manager:
        manager.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert_batches_equal(expected, take(fresh, 3))


def test_threads_and_workers_do_not_change_the_stream():
    base, _ = labelled_dataset(12, size=(8, 8), augment="crop_flip")
    expected = take(make_train_iterator(base, seed=4, batch_size=4), 7)
    threaded, _ = labelled_dataset(12, size=(8, 8), augment="crop_flip", num_threads=2, prefetch=3)
    assert_batches_equal(expected, take(make_train_iterator(threaded, seed=4, batch_size=4), 7))
    workers, _ = labelled_dataset(12, size=(8, 8), augment="crop_flip", num_workers=2)
    iterator = make_train_iterator(workers, seed=4, batch_size=4)
    try:
        assert_batches_equal(expected[:4], take(iterator, 4))
        state = iterator.get_state()
    finally:
        iterator.close()
    resumed = make_train_iterator(workers, seed=4, batch_size=4)
    try:
        resumed.set_state(state)
        assert_batches_equal(expected[4:], take(resumed, 3))
    finally:
        resumed.close()


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_eval_covers_every_example_once(process_count):
    dataset, images = labelled_dataset(11, augment="resized_crop_flip")
    passes = [
        list(
            make_eval_iterator(dataset, batch_size=8, process_index=p, process_count=process_count)
        )
        for p in range(process_count)
    ]
    assert {len(batches) for batches in passes} == {2}  # ceil(11 / 8) for every process
    batches = list(itertools.chain.from_iterable(passes))
    assert {b["image"].shape for b in batches} == {(8 // process_count, 4, 4, 3)}
    assert {b["mask"].dtype for b in batches} == {np.dtype(np.float32)}
    labels = np.concatenate([b["label"] for b in batches])
    masks = np.concatenate([b["mask"] for b in batches])
    assert sorted(labels[masks == 1]) == list(range(11))
    assert masks.sum() == 11 and set(masks) == {0.0, 1.0}


def test_eval_passes_repeat_identically_and_apply_the_eval_transform():
    dataset, images = labelled_dataset(5, size=(10, 8), augment="resized_crop_flip")
    eval_batches = make_eval_iterator(dataset, batch_size=4)
    first, second = list(eval_batches), list(eval_batches)
    assert_batches_equal(first, second)
    uint8_crop = dataset.augmentation.eval(images[3])
    np.testing.assert_allclose(
        first[0]["image"][3], (uint8_crop / 255 - 0.5) / 0.25, rtol=1e-6, atol=1e-6
    )
    assert first[1]["mask"].tolist() == [1, 0, 0, 0]


def test_digits_end_to_end(digits_dir):
    dataset = load_dataset(make_config("digits", digits_dir, num_threads=1, prefetch=2))
    batch = next(make_train_iterator(dataset, seed=0, batch_size=32))
    assert batch["image"].shape == (32, 8, 8, 1)
    # Normalized with the train statistics, a large sample is near zero mean and unit std.
    sample = np.concatenate(
        [b["image"] for b in take(make_train_iterator(dataset, seed=0, batch_size=479), 3)]
    )
    assert abs(sample.mean()) < 1e-4 and abs(sample.std() - 1) < 1e-4
    eval_batches = list(
        make_eval_iterator(dataset, batch_size=64, process_index=1, process_count=2)
    )
    assert len(eval_batches) == 6 and eval_batches[0]["image"].shape == (32, 8, 8, 1)


def labels_of(batches):
    return np.concatenate([b["label"] for b in batches])


def test_batch_size_changes_continue_the_stream():
    # Batches of 4 up to batch 3, then of 6: the same positions as one example at a time.
    dataset, _ = labelled_dataset(10, size=(8, 8), augment="crop_flip")
    changing = take(
        make_train_iterator(dataset, seed=3, batch_size=4, batch_size_changes=((3, 6),)), 5
    )
    assert [len(b["label"]) for b in changing] == [4, 4, 4, 6, 6]
    one_by_one = take(make_train_iterator(dataset, seed=3, batch_size=1), 24)
    for key in ("label", "image"):
        np.testing.assert_array_equal(
            np.concatenate([b[key] for b in changing]), np.concatenate([b[key] for b in one_by_one])
        )


def test_batch_size_changes_resume_exactly_in_a_later_phase():
    dataset, _ = labelled_dataset(10, size=(8, 8), augment="crop_flip")
    changes = ((2, 6), (4, 2))
    iterator = make_train_iterator(dataset, seed=1, batch_size=4, batch_size_changes=changes)
    take(iterator, 3)  # inside the run of 6
    state = iterator.get_state()
    expected = take(iterator, 4)
    assert [len(b["label"]) for b in expected] == [6, 2, 2, 2]
    fresh = make_train_iterator(dataset, seed=1, batch_size=4, batch_size_changes=changes)
    fresh.set_state(state)
    assert_batches_equal(expected, take(fresh, 4))


def test_process_shares_follow_batch_size_changes():
    dataset, _ = labelled_dataset(20, size=(8, 8), augment="crop_flip")
    single = take(
        make_train_iterator(dataset, seed=1, batch_size=4, batch_size_changes=((2, 8),)), 4
    )
    shares = [
        take(
            make_train_iterator(
                dataset,
                seed=1,
                batch_size=4,
                batch_size_changes=((2, 8),),
                process_index=p,
                process_count=2,
            ),
            4,
        )
        for p in range(2)
    ]
    for step, whole in enumerate(single):
        np.testing.assert_array_equal(
            np.concatenate([share[step]["image"] for share in shares]), whole["image"]
        )


def test_batch_augmentation_holds_m_distinct_copies_of_each_example():
    dataset, images = labelled_dataset(6, size=(10, 8), augment="resized_crop_flip")
    plain = take(make_train_iterator(dataset, seed=2, batch_size=3), 2)
    augmented = take(make_train_iterator(dataset, seed=2, batch_size=3, multiplicity=4), 2)
    for single, batch in zip(plain, augmented):
        assert batch["image"].shape == (12, 4, 4, 3)
        # Each example's 4 copies sit next to each other, in the order of the plain batch...
        np.testing.assert_array_equal(batch["label"], np.repeat(single["label"], 4))
        copies = batch["image"].reshape(3, 4, 4, 4, 3)
        for example in range(3):
            # ...copy 0 is the plain batch's image, and the 4 augmentations all differ.
            np.testing.assert_array_equal(copies[example, 0], single["image"][example])
            views = {copies[example, c].tobytes() for c in range(4)}
            assert len(views) == 4


def test_batch_augmentation_copies_are_seeded_by_position_and_copy():
    # Copy c of stream position i is the train augmentation drawn from rng (seed, i, c).
    dataset, images = labelled_dataset(5, size=(10, 8), augment="resized_crop_flip")
    batch = next(make_train_iterator(dataset, seed=4, batch_size=5, multiplicity=3))
    _, augment_seed = derive_seeds(4)
    for position in range(5):
        label = batch["label"][3 * position]
        for copy in range(3):
            view = dataset.augmentation.train(
                images[label], np.random.default_rng((augment_seed, position, copy))
            )
            np.testing.assert_allclose(
                batch["image"][3 * position + copy], (view / 255 - 0.5) / 0.25, rtol=1e-6, atol=1e-6
            )


def test_batch_augmentation_splits_over_processes_and_resumes():
    dataset, _ = labelled_dataset(8, size=(8, 8), augment="crop_flip")
    single = take(make_train_iterator(dataset, seed=0, batch_size=4, multiplicity=2), 3)
    shares = [
        take(
            make_train_iterator(
                dataset, seed=0, batch_size=4, multiplicity=2, process_index=p, process_count=2
            ),
            3,
        )
        for p in range(2)
    ]
    for step, whole in enumerate(single):
        for key in ("image", "label"):
            np.testing.assert_array_equal(
                np.concatenate([share[step][key] for share in shares]), whole[key]
            )
    iterator = make_train_iterator(dataset, seed=0, batch_size=4, multiplicity=2)
    take(iterator, 1)
    state = iterator.get_state()
    fresh = make_train_iterator(dataset, seed=0, batch_size=4, multiplicity=2)
    fresh.set_state(state)
    assert_batches_equal(single[1:], take(fresh, 2))


def test_the_stream_is_grains_shuffle_of_the_records_over_epochs_sizes_and_processes():
    # The reference order is grain's own per-example shuffle and repeat; position i's copy c is
    # the train augmentation of its record drawn from rng (augment seed, i, c).
    dataset, images = labelled_dataset(10, size=(8, 8), augment="crop_flip")
    seed, multiplicity = 7, 2
    shuffle_seed, augment_seed = derive_seeds(seed)
    order = grain.MapDataset.source(dataset.train_source).shuffle(seed=shuffle_seed).repeat()
    sizes = [4] * 3 + [6] * 4 + [2] * 9  # 50 positions: 5 epochs

    def share(process_index):
        return make_train_iterator(
            dataset,
            seed=seed,
            batch_size=4,
            batch_size_changes=((3, 6), (7, 2)),
            multiplicity=multiplicity,
            process_index=process_index,
            process_count=2,
        )

    shares = [share(0), share(1)]
    batches, states = [], []
    for start, size in zip(np.cumsum([0, *sizes]), sizes):
        records = [order[i]["label"] for i in range(start, start + size)]
        views = [
            dataset.augmentation.train(images[record], np.random.default_rng((augment_seed, i, c)))
            for i, record in enumerate(records, start)
            for c in range(multiplicity)
        ]
        states.append(shares[1].get_state())
        batches.append([next(iterator) for iterator in shares])
        np.testing.assert_array_equal(
            np.concatenate([b["label"] for b in batches[-1]]), np.repeat(records, multiplicity)
        )
        np.testing.assert_array_equal(
            np.concatenate([b["image"] for b in batches[-1]]),
            normalize(np.stack(views), np.asarray(dataset.mean), np.asarray(dataset.std)),
        )
    # Restored at any batch, in any phase of the batch size, a process goes on exactly.
    for step in (2, 5, 9):
        resumed = share(1)
        resumed.set_state(states[step])
        assert_batches_equal([b[1] for b in batches[step:]], take(resumed, len(sizes) - step))

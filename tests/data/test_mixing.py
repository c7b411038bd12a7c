"""mixup and CutMix: the images and label weights against NumPy references written pixel by pixel,
their statistics, their place in the pipeline (determinism, exact resume, process shares, batch
augmentation, batch-size changes, eval untouched), one-line refusals, a tiny launch on digits."""

import math
import pickle

import numpy as np
import pytest

from bnresearch.data.augment import cutmix, make_augmentation, mixup, option_defaults
from bnresearch.data.pipeline import derive_mix_seed, make_eval_iterator, make_train_iterator
from bnresearch.errors import UsageError
from bnresearch.train.loop import train_and_evaluate
from tests.data.datatest_utils import labelled_dataset
from tests.train.runs import launch, read_metrics, read_status, tiny_config


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def float_batch(count, height, width, channels=3, seed=0):
    return (
        np.random.default_rng(seed).normal(size=(count, height, width, channels)).astype(np.float32)
    )


def reference_mixup(images, lam, partners):
    """Example by example, in float64."""
    images = images.astype(np.float64)
    return np.stack([lam * images[i] + (1 - lam) * images[j] for i, j in enumerate(partners)])


def reference_cutmix(images, lam, partners, row, column):
    """Pixel by pixel: the box has sides floor(side sqrt(1 - lam)) and starts half a side (rounded
    down) before its centre; pixels of it inside the image come from the partner. Returns the
    images and the fraction of each image's pixels that stayed its own."""
    count, height, width = images.shape[:3]
    box_height, box_width = (
        math.floor(height * math.sqrt(1 - lam)),
        math.floor(width * math.sqrt(1 - lam)),
    )
    top, left = row - box_height // 2, column - box_width // 2
    out = images.copy()
    pasted = 0
    for y in range(height):
        for x in range(width):
            if top <= y < top + box_height and left <= x < left + box_width:
                pasted += 1
                for i in range(count):
                    out[i, y, x] = images[partners[i], y, x]
    return out, 1 - pasted / (height * width)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_is_the_convex_combination_with_its_partner(seed, alpha):
    images = float_batch(7, 5, 4, seed=seed)
    mixed, partners, weights = mixup(images, np.random.default_rng(seed), alpha=alpha)
    # The documented draws, in order: lambda, then the permutation.
    rng = np.random.default_rng(seed)
    lam = np.float32(rng.beta(alpha, alpha))
    np.testing.assert_array_equal(partners, rng.permutation(7))
    assert sorted(partners) == list(range(7))
    assert mixed.dtype == np.float32 and weights.dtype == np.float32
    np.testing.assert_array_equal(weights, np.full(7, lam))
    np.testing.assert_allclose(mixed, reference_mixup(images, lam, partners), atol=1e-6)
    np.testing.assert_array_equal(images, float_batch(7, 5, 4, seed=seed))  # input untouched


# Non-square images, so a swap of rows and columns shows; many seeds, so boxes meet the borders.
@pytest.mark.parametrize("seed", range(12))
def test_cutmix_pastes_the_partners_box_and_weighs_its_clipped_area(seed):
    images = float_batch(5, 9, 6, seed=seed)
    mixed, partners, weights = cutmix(images, np.random.default_rng(seed), probability=1.0)
    rng = np.random.default_rng(seed)
    rng.random()  # the draw against probability
    lam = rng.beta(1.0, 1.0)
    np.testing.assert_array_equal(partners, rng.permutation(5))
    row, column = rng.integers(0, [9, 6])
    expected, own = reference_cutmix(images, lam, partners, row, column)
    np.testing.assert_array_equal(mixed, expected)
    np.testing.assert_allclose(weights, np.full(5, own), rtol=1e-6)
    assert weights.dtype == np.float32 and mixed.dtype == np.float32
    np.testing.assert_array_equal(images, float_batch(5, 9, 6, seed=seed))  # input untouched


def test_cutmix_weight_is_the_fraction_of_pixels_that_stayed():
    # Independent of the box arithmetic: count the pixels equal to the partner's and not the own.
    images = float_batch(4, 16, 16, seed=3)
    for seed in range(30):
        mixed, partners, weights = cutmix(images, np.random.default_rng(seed), probability=1.0)
        for i, j in enumerate(partners):
            if i == j:
                continue
            from_partner = np.all(mixed[i] == images[j], -1) & np.any(mixed[i] != images[i], -1)
            assert weights[i] == pytest.approx(1 - from_partner.mean(), abs=1e-6)


def test_cutmix_skips_a_batch_with_one_minus_its_probability():
    images = float_batch(3, 32, 32, channels=1)
    mixed_count = 0
    for seed in range(4000):
        mixed, partners, weights = cutmix(images, np.random.default_rng(seed), probability=0.3)
        if np.all(weights == 1):
            # Unmixed: the batch itself, each example its own partner.
            assert mixed is images
            np.testing.assert_array_equal(partners, np.arange(3))
        else:
            mixed_count += 1
    # A mixed batch keeps weight 1 only when its box is empty: 1 - lam < 1/32^2, 0.1% of them.
    assert abs(mixed_count / 4000 - 0.3 * (1 - 1 / 1024)) < 3 * math.sqrt(0.21 / 4000)


def test_mixup_lambda_follows_its_beta():
    images = float_batch(2, 2, 2)
    for alpha in (1.0, 0.2):
        lams = np.array(
            [mixup(images, np.random.default_rng(s), alpha=alpha)[2][0] for s in range(20000)]
        )
        variance = 1 / (4 * (2 * alpha + 1))  # of Beta(alpha, alpha), whose mean is 1/2
        assert abs(lams.mean() - 0.5) < 4 * math.sqrt(variance / 20000)
        assert lams.var() == pytest.approx(variance, rel=0.05)
        assert lams.min() >= 0 and lams.max() <= 1


def expected_cutmix_weight(side, lam_points=2000):
    """E[own pixel fraction] of CutMix with lambda ~ U(0, 1) on a side x side image: the mean over
    lambda (midpoint rule) and all centres of the box's overlap with the image."""
    total = 0.0
    for lam in (np.arange(lam_points) + 0.5) / lam_points:
        box = math.floor(side * math.sqrt(1 - lam))
        # The overlap with [0, side) of [c - box // 2, c - box // 2 + box), one axis, all c.
        overlaps = np.array(
            [min(side, c - box // 2 + box) - max(0, c - box // 2) for c in range(side)]
        )
        total += 1 - np.mean(np.outer(overlaps, overlaps)) / side**2
    return total / lam_points


def test_cutmix_weight_averages_to_its_clipped_expectation():
    images = float_batch(1, 8, 8, channels=1)
    weights = np.array(
        [cutmix(images, np.random.default_rng(s), probability=1.0)[2][0] for s in range(20000)]
    )
    # Clipping at the border makes boxes smaller than 1 - lambda: the mean is above 1/2.
    expected = expected_cutmix_weight(8)
    assert expected > 0.55
    assert abs(weights.mean() - expected) < 4 * weights.std() / math.sqrt(20000)


@pytest.mark.parametrize("augment", ["crop_flip,mixup", "crop_flip,cutmix", "mixup"])
def test_a_mixed_batch_is_the_plain_batch_mixed_by_its_own_generator(augment):
    plain_augment = augment.rpartition(",")[0] or "none"
    mixed_data, _ = labelled_dataset(12, size=(8, 8), augment=augment)
    plain_data, _ = labelled_dataset(12, size=(8, 8), augment=plain_augment)
    mixed = take(make_train_iterator(mixed_data, seed=3, batch_size=4), 6)
    plain = take(make_train_iterator(plain_data, seed=3, batch_size=4), 6)
    for index, (batch, unmixed) in enumerate(zip(mixed, plain)):
        assert set(batch) == {"image", "label", "mix_label", "mix_weight"}
        rng = np.random.default_rng((derive_mix_seed(3), index, 0))
        images, partners, weights = mixed_data.augmentation.mix(unmixed["image"], rng)
        np.testing.assert_array_equal(batch["image"], images)
        np.testing.assert_array_equal(batch["label"], unmixed["label"])
        np.testing.assert_array_equal(batch["mix_label"], unmixed["label"][partners])
        np.testing.assert_array_equal(batch["mix_weight"], weights)
        assert batch["mix_label"].dtype == np.int32 and batch["mix_weight"].dtype == np.float32


def test_without_mixing_batches_have_no_new_keys():
    dataset, _ = labelled_dataset(8, size=(8, 8), augment="crop_flip")
    assert dataset.augmentation.mix is None
    assert set(next(make_train_iterator(dataset, seed=0, batch_size=4))) == {"image", "label"}


def test_each_batch_draws_its_own_lambda_and_seeds_differ():
    dataset, _ = labelled_dataset(16, size=(4, 4), augment="mixup")
    weights = [
        b["mix_weight"][0] for b in take(make_train_iterator(dataset, seed=0, batch_size=4), 8)
    ]
    assert len(set(weights)) == 8
    again = [
        b["mix_weight"][0] for b in take(make_train_iterator(dataset, seed=0, batch_size=4), 8)
    ]
    other = [
        b["mix_weight"][0] for b in take(make_train_iterator(dataset, seed=1, batch_size=4), 8)
    ]
    assert again == weights and other != weights


@pytest.mark.parametrize("augment", ["crop_flip,mixup", "crop_flip,cutmix"])
def test_a_restored_iterator_goes_on_exactly(augment):
    dataset, _ = labelled_dataset(10, size=(8, 8), augment=augment, num_threads=2, prefetch=3)
    iterator = make_train_iterator(dataset, seed=2, batch_size=4)
    take(iterator, 5)  # mid-stream, mid-epoch
    state = iterator.get_state()
    expected = take(iterator, 4)
    fresh = make_train_iterator(dataset, seed=2, batch_size=4)
    fresh.set_state(state)
    for want, got in zip(expected, take(fresh, 4)):
        assert want.keys() == got.keys()
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])


def test_batch_augmentation_and_batch_size_changes_mix_and_resume():
    # M = 2 copies; 2 positions per batch, then 4 from batch 3 on; mixing pairs all M*b images.
    dataset, _ = labelled_dataset(10, size=(8, 8), augment="crop_flip,cutmix")
    plain_data, _ = labelled_dataset(10, size=(8, 8), augment="crop_flip")
    options = dict(seed=1, batch_size=2, batch_size_changes=((3, 4),), multiplicity=2)
    batches = take(make_train_iterator(dataset, **options), 6)
    plain = take(make_train_iterator(plain_data, **options), 6)
    assert [len(b["label"]) for b in batches] == [4, 4, 4, 8, 8, 8]
    for index, (batch, unmixed) in enumerate(zip(batches, plain)):
        rng = np.random.default_rng((derive_mix_seed(1), index, 0))
        images, partners, _ = dataset.augmentation.mix(unmixed["image"], rng)
        np.testing.assert_array_equal(batch["image"], images)
        np.testing.assert_array_equal(batch["mix_label"], unmixed["label"][partners])
    iterator = make_train_iterator(dataset, **options)
    take(iterator, 4)  # into the second phase
    fresh = make_train_iterator(dataset, **options)
    fresh.set_state(iterator.get_state())
    for want, got in zip(batches[4:], take(fresh, 2)):
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])


def test_each_process_mixes_its_share_with_its_own_generator():
    dataset, _ = labelled_dataset(8, size=(8, 8), augment="crop_flip,mixup")
    plain_data, _ = labelled_dataset(8, size=(8, 8), augment="crop_flip")
    for process in range(2):
        shares = dict(batch_size=4, process_index=process, process_count=2)
        mixed = take(make_train_iterator(dataset, seed=5, **shares), 3)
        plain = take(make_train_iterator(plain_data, seed=5, **shares), 3)
        for index, (batch, unmixed) in enumerate(zip(mixed, plain)):
            rng = np.random.default_rng((derive_mix_seed(5), index, process))
            images, partners, weights = dataset.augmentation.mix(unmixed["image"], rng)
            np.testing.assert_array_equal(batch["image"], images)
            np.testing.assert_array_equal(batch["mix_label"], unmixed["label"][partners])


def test_eval_batches_are_never_mixed():
    dataset, _ = labelled_dataset(6, size=(8, 8), augment="crop_flip,cutmix")
    plain_data, _ = labelled_dataset(6, size=(8, 8), augment="crop_flip")
    for batch, plain in zip(
        make_eval_iterator(dataset, batch_size=4), make_eval_iterator(plain_data, batch_size=4)
    ):
        assert set(batch) == {"image", "label", "mask"}
        for key in batch:
            np.testing.assert_array_equal(batch[key], plain[key])


def test_options_reach_the_mixing_function():
    augmentation = make_augmentation(
        "crop,cutmix", crop_padding=2, image_size=4, options={"cutmix": {"probability": 0.0}}
    )
    images = float_batch(3, 4, 4)
    for seed in range(20):
        assert augmentation.mix(images, np.random.default_rng(seed))[0] is images
    mixup_02 = make_augmentation(
        "mixup", crop_padding=2, image_size=4, options={"mixup": {"alpha": 0.2}}
    )
    rng = np.random.default_rng(0)
    assert mixup_02.mix(images, np.random.default_rng(0))[2][0] == np.float32(rng.beta(0.2, 0.2))
    assert option_defaults()["mixup"] == {"alpha": 1.0}
    assert option_defaults()["cutmix"] == {"alpha": 1.0, "probability": 0.5}


@pytest.mark.parametrize(
    "spec, options, message",
    [
        (
            "mixup,crop_flip",
            {},
            "augment 'mixup,crop_flip' puts 'mixup' before 'crop_flip'; mixup mixes the finished"
            " batch, so it comes last",
        ),
        (
            "crop,cutmix,flip",
            {},
            "augment 'crop,cutmix,flip' puts 'cutmix' before 'flip'; cutmix mixes",
        ),
        (
            "crop,mixup,cutmix",
            {},
            "augment 'crop,mixup,cutmix' names 2 mixings (mixup, cutmix); use one of them",
        ),
        ("mixup,mixup", {}, "names 2 mixings (mixup, mixup)"),
        ("crop,mixpu", {}, "unknown augmentation 'mixpu' in augment 'crop,mixpu'; valid: none,"),
        (
            "mixup",
            {"mixup": {"alpha": 0}},
            "augment_kwargs.mixup.alpha=0 must be a positive number",
        ),
        ("cutmix", {"cutmix": {"alpha": -1.0}}, "cutmix.alpha=-1.0 must be a positive number"),
        ("cutmix", {"cutmix": {"probability": 1.5}}, "cutmix.probability=1.5 must lie in [0, 1]"),
        (
            "mixup",
            {"mixup": {"probability": 0.5}},
            "unknown option(s) 'probability' for augmentation 'mixup'; valid options: alpha",
        ),
    ],
)
def test_bad_order_pairs_and_options_are_refused_in_one_line(spec, options, message):
    with pytest.raises(UsageError) as error:
        make_augmentation(spec, crop_padding=4, image_size=8, options=options)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_tiny_mixup_run_on_digits_trains(tmp_path, prepared_data_dir):
    # Through launch.py, on 8 devices: the mixed batch's keys are sharded like the rest.
    result = launch(
        tmp_path,
        prepared_data_dir,
        **{"dataset.augment": "crop_flip,mixup", "train_duration": "12 steps"},
    )
    assert result.returncode == 0, result.stderr
    assert read_status(tmp_path)["status"] == "done"
    train = [m for m in read_metrics(tmp_path) if "train/loss" in m]
    assert len(train) == 12
    # Mixed targets keep the loss well above 0 and the weighted accuracy strictly inside (0, 1).
    assert all(math.isfinite(m["train/loss"]) and m["train/loss"] > 0.1 for m in train)
    assert all(0 < m["train/accuracy"] < 1 for m in train)
    assert any("eval/accuracy" in m for m in read_metrics(tmp_path))


def test_cutmix_trains_with_copies_several_updates_a_call_and_the_noise_scale(
    tmp_path, prepared_data_dir
):
    # The stacked batches of a K-update call, batch augmentation's copies and the noise scale's
    # sub-batches all carry the mixed batch's keys.
    config = tiny_config(
        prepared_data_dir,
        **{
            "dataset.augment": "crop,cutmix",
            "dataset.augment_kwargs.cutmix.probability": 1.0,
            "batch_augmentation.multiplicity": 2,
            "steps_per_call": 2,
            "noise_scale.enabled": True,
            "noise_scale.every": "4 steps",
            "train_duration": "8 steps",
        },
    )
    assert train_and_evaluate(config, str(tmp_path)) == "done"
    metrics = read_metrics(tmp_path)
    assert any("train/noise_scale" in m for m in metrics)
    assert all(0 < m["train/accuracy"] < 1 for m in metrics if "train/accuracy" in m)


def test_mixing_pickles_for_the_pipelines_worker_processes():
    for augment in ("mixup", "crop_flip,cutmix"):
        augmentation = make_augmentation(augment, crop_padding=2, image_size=4)
        restored = pickle.loads(pickle.dumps(augmentation))
        images = float_batch(4, 4, 4)
        for seed in range(3):
            for got, want in zip(
                restored.mix(images, np.random.default_rng(seed)),
                augmentation.mix(images, np.random.default_rng(seed)),
            ):
                np.testing.assert_array_equal(got, want)

"""Each augmentation against a NumPy/PIL reference, known values or the statistics that define
it; compositions, determinism, and the one-line errors for a name or option that does not exist."""

import hashlib
import inspect
import math
import pickle

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from bnresearch.data.augment import (
    AUGMENTATION_NAMES,
    AUGMENTATIONS,
    MIXINGS,
    OPTION_RANGES,
    check_options,
    color_jitter,
    cutout,
    gaussian_noise,
    horizontal_flip,
    make_augmentation,
    normalize,
    option_defaults,
    random_erasing,
    random_rotation,
    random_translation,
    resize_and_center_crop,
    sample_crop_box,
)
from bnresearch.errors import UsageError


def train_transform(spec, crop_padding=4, image_size=8, **options):
    return make_augmentation(
        spec, crop_padding=crop_padding, image_size=image_size, options=options
    ).train


def crop_flip(image, rng, *, padding):
    return train_transform("crop_flip", crop_padding=padding)(image, rng)


def random_resized_crop_flip(image, rng, *, size):
    return train_transform("resized_crop_flip", image_size=size)(image, rng)


def random_image(height, width, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def padded_windows(image, padding):
    """Every (H, W) window of the zero-padded image, and their mirror images."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    windows = [
        padded[top : top + height, left : left + width]
        for top in range(2 * padding + 1)
        for left in range(2 * padding + 1)
    ]
    return windows, [w[:, ::-1] for w in windows]


def test_crop_flip_is_a_window_of_the_padded_image_or_its_mirror():
    image = random_image(7, 9)
    windows, mirrored = padded_windows(image, 3)
    seen_offsets, flips = set(), 0
    for seed in range(300):
        out = crop_flip(image, np.random.default_rng(seed), padding=3)
        assert out.shape == image.shape and out.dtype == np.uint8
        plain = [i for i, w in enumerate(windows) if np.array_equal(out, w)]
        flipped = [i for i, w in enumerate(mirrored) if np.array_equal(out, w)]
        assert plain or flipped
        seen_offsets.update(plain or flipped)
        flips += bool(flipped) and not plain
    assert len(seen_offsets) == 49  # every offset in [0, 6]^2 is reachable
    assert 100 < flips < 200  # p = 0.5


def test_crop_is_a_shifted_window_without_flip():
    # Every shift (top, left) in [-1, 1]^2 appears, and the image is never mirrored.
    image = random_image(6, 6)
    crop = make_augmentation("crop", crop_padding=1, image_size=8).train
    windows = set()
    for seed in range(200):
        out = crop(image, np.random.default_rng(seed))
        padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
        matches = [
            (top, left)
            for top in range(3)
            for left in range(3)
            if np.array_equal(out, padded[top : top + 6, left : left + 6])
        ]
        assert matches, "not a window of the padded image"
        windows.update(matches)
    assert len(windows) == 9


def test_crop_flip_draws_offsets_then_flip():
    image = random_image(5, 6, channels=1)
    rng = np.random.default_rng(7)
    top, left = rng.integers(0, 5, size=2)
    flip = rng.random() < 0.5
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    expected = padded[top : top + 5, left : left + 6]
    expected = expected[:, ::-1] if flip else expected
    np.testing.assert_array_equal(crop_flip(image, np.random.default_rng(7), padding=2), expected)


def test_flip_mirrors_left_right():
    image = random_image(3, 4)
    rng_flip = next(
        np.random.default_rng(s) for s in range(100) if np.random.default_rng(s).random() < 0.5
    )
    np.testing.assert_array_equal(horizontal_flip(image, rng_flip), image[:, ::-1])
    rng_keep = next(
        np.random.default_rng(s) for s in range(100) if np.random.default_rng(s).random() >= 0.5
    )
    np.testing.assert_array_equal(horizontal_flip(image, rng_keep), image)


def test_crop_boxes_respect_bounds_area_and_aspect_ratio():
    for seed in range(500):
        top, left, height, width = sample_crop_box(60, 90, np.random.default_rng(seed))
        assert 0 <= top and top + height <= 60 and 0 <= left and left + width <= 90
        # Rounding to whole pixels moves area and ratio a little beyond the sampled ranges.
        assert 0.08 * 0.9 <= height * width / (60 * 90) <= 1.0
        assert 3 / 4 * 0.9 <= width / height <= 4 / 3 * 1.1


def test_crop_box_falls_back_to_a_central_crop():
    # A 1-pixel-high strip admits no box with aspect ratio <= 4/3 at 8% of the area.
    assert sample_crop_box(1, 100, np.random.default_rng(0)) == (0, 49, 1, 1)

    # Inside the ratio range the fallback is the whole image.
    class NeverFits:
        def uniform(self, low, high):
            return high if low < 0 else 10.0  # area 10x the image: never fits

    assert sample_crop_box(30, 36, NeverFits()) == (0, 0, 30, 36)


def test_resized_crop_equals_pil_resize_of_the_box():
    image = random_image(40, 50)
    for seed in range(20):
        top, left, height, width = sample_crop_box(40, 50, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        out = random_resized_crop_flip(image, rng, size=16)
        flipped = rng_after_box_flips(seed)
        crop = Image.fromarray(image[top : top + height, left : left + width])
        expected = np.asarray(crop.resize((16, 16), Image.Resampling.BILINEAR))
        expected = expected[:, ::-1] if flipped else expected
        assert out.shape == (16, 16, 3)
        np.testing.assert_array_equal(out, expected)


def rng_after_box_flips(seed):
    rng = np.random.default_rng(seed)
    sample_crop_box(40, 50, rng)
    return rng.random() < 0.5


def test_eval_resizes_shorter_side_then_crops_the_centre():
    image = random_image(30, 45)
    out = resize_and_center_crop(image, size=14)
    # Shorter side 30 -> round(14 / 0.875) = 16, longer side 45 -> 24; centre 14x14 at (1, 5).
    resized = np.asarray(Image.fromarray(image).resize((24, 16), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out, resized[1:15, 5:19])


def test_eval_of_grayscale_keeps_one_channel():
    out = resize_and_center_crop(random_image(20, 10, channels=1), size=7)
    assert out.shape == (7, 7, 1)


def test_recipes_by_name():
    assert AUGMENTATION_NAMES[:4] == ("none", "crop", "crop_flip", "resized_crop_flip")
    image = random_image(12, 12)
    none = make_augmentation("none", crop_padding=4, image_size=8)
    assert none.train(image, np.random.default_rng(0)) is image and none.eval(image) is image
    crop = make_augmentation("crop_flip", crop_padding=4, image_size=8)
    assert crop.output_size is None and crop.eval(image) is image
    resized = make_augmentation("resized_crop_flip", crop_padding=4, image_size=8)
    assert resized.output_size == 8 and resized.eval(image).shape == (8, 8, 3)
    shift = make_augmentation("crop", crop_padding=1, image_size=8)
    assert shift.output_size is None and shift.eval(image) is image


def test_normalize_matches_the_formula():
    images = random_image(4 * 5, 6, channels=3).reshape(4, 5, 6, 3)
    mean, std = np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.3, 0.4])
    out = normalize(images, mean, std)
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(out, (images / 255 - mean) / std, rtol=1e-6, atol=1e-6)
    assert math.isclose(
        float(normalize(np.full((1, 1, 1, 1), 255, np.uint8), [0.5], [0.25])[0, 0, 0, 0]), 2.0
    )


# sha256 of the train outputs of seeds (7, 0..99, 0) and the eval output, over a 32x32 RGB, an
# 8x8 grey and a 40x50 RGB image (crop_padding 4, image_size 24), computed with the recipes as
# they were before augmentations became composable (commit 933b851): studies depend on them.
RECIPE_DIGESTS = {
    "none": "639f4d25350b765e",
    "crop": "ea856e9e4f24ed6f",
    "crop_flip": "e03f8151ff352c39",
    "resized_crop_flip": "646072e150720eb8",
}


@pytest.mark.parametrize("name", sorted(RECIPE_DIGESTS))
def test_the_recipes_give_the_images_they_always_gave(name):
    augmentation = make_augmentation(name, crop_padding=4, image_size=24)
    digest = hashlib.sha256()
    for seed, shape in [(1, (32, 32, 3)), (2, (8, 8, 1)), (3, (40, 50, 3))]:
        image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
        for position in range(100):
            out = augmentation.train(image, np.random.default_rng((7, position, 0)))
            digest.update(np.ascontiguousarray(out).tobytes())
        digest.update(np.ascontiguousarray(augmentation.eval(image)).tobytes())
    assert digest.hexdigest()[:16] == RECIPE_DIGESTS[name]


# The per-example ones; the mixings (mixup, cutmix) are in test_mixing.py.
@pytest.mark.parametrize("name", [name for name in AUGMENTATION_NAMES if name not in MIXINGS])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_augmentation_is_a_deterministic_uint8_function_of_its_generator(name, channels):
    image = random_image(20, 24, channels)
    before = image.copy()
    augmentation = make_augmentation(name, crop_padding=3, image_size=10)
    outputs = [augmentation.train(image, np.random.default_rng(seed)) for seed in (5, 5, 6)]
    shape = (10, 10, channels) if name.startswith("resized") else image.shape
    for out in outputs:
        assert out.dtype == np.uint8 and out.shape == shape
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(image, before)  # the input is never written to
    if name != "none":  # some draw of the generator changes the image
        seeds = range(20)
        assert any(
            not np.array_equal(augmentation.train(image, np.random.default_rng(s)), outputs[0])
            for s in seeds
        )
    assert augmentation.eval(image).shape == shape


def test_a_composition_applies_its_steps_in_order_on_one_generator():
    image = random_image(12, 12)
    options = {"cutout": {"length": 5, "fill": 200}, "color_jitter": {"brightness": 0.3}}
    composed = make_augmentation(
        "crop_flip, cutout,color_jitter", crop_padding=2, image_size=8, options=options
    )
    assert composed.name == "crop_flip,cutout,color_jitter" and composed.output_size is None
    for seed in range(10):
        rng = np.random.default_rng(seed)
        expected = crop_flip(image, rng, padding=2)
        expected = cutout(expected, rng, length=5, fill=200)
        expected = color_jitter(expected, rng, brightness=0.3)
        np.testing.assert_array_equal(composed.train(image, np.random.default_rng(seed)), expected)
    # Order matters: cutout after the crop is a whole square more often than before it.
    after = train_transform("crop,cutout", crop_padding=4, cutout={"length": 4, "fill": 255})
    before = train_transform("cutout,crop", crop_padding=4, cutout={"length": 4, "fill": 255})
    black = np.zeros((12, 12, 1), np.uint8)
    area_after, area_before = (
        np.mean([(f(black, np.random.default_rng(s)) == 255).sum() for s in range(400)])
        for f in (after, before)
    )
    assert area_after > area_before + 1


def test_a_recipe_is_its_steps():
    image = random_image(10, 14)
    for recipe, steps in [("crop_flip", "crop,flip"), ("resized_crop_flip", "resized_crop,flip")]:
        for seed in range(20):
            np.testing.assert_array_equal(
                train_transform(recipe)(image, np.random.default_rng(seed)),
                train_transform(steps)(image, np.random.default_rng(seed)),
            )


def test_a_resizing_step_sets_the_output_size_and_the_eval_transform():
    image = random_image(30, 40)
    composed = make_augmentation("cutout,resized_crop,flip", crop_padding=4, image_size=12)
    assert composed.output_size == 12
    np.testing.assert_array_equal(composed.eval(image), resize_and_center_crop(image, size=12))
    assert composed.train(image, np.random.default_rng(0)).shape == (12, 12, 3)


def test_compositions_pickle_for_the_pipelines_worker_processes():
    augmentation = make_augmentation(
        "crop_flip,rotate,random_erasing", crop_padding=2, image_size=8
    )
    copy = pickle.loads(pickle.dumps(augmentation))
    image = random_image(9, 9)
    np.testing.assert_array_equal(
        copy.train(image, np.random.default_rng(3)),
        augmentation.train(image, np.random.default_rng(3)),
    )


def test_flip_rate_is_the_probability():
    # 4000 draws: the rate's standard deviation is at most 0.008; the bound is 4 of them.
    image = random_image(2, 3)
    for probability in (0.5, 0.2):
        flips = [
            not np.array_equal(
                horizontal_flip(image, np.random.default_rng(s), probability=probability), image
            )
            for s in range(4000)
        ]
        assert abs(np.mean(flips) - probability) < 0.032


def test_translation_is_a_shift_by_at_most_the_fraction_of_each_side():
    # 10 x 20 at 0.2: shifts in [-2, 2] x [-4, 4], all of them reachable, uncovered pixels fill.
    image = random_image(10, 20)
    shifts = set()
    for seed in range(600):
        out = random_translation(image, np.random.default_rng(seed), max_fraction=0.2, fill=7)
        padded = np.pad(image, ((2, 2), (4, 4), (0, 0)), constant_values=7)
        matches = [
            (top, left)
            for top in range(-2, 3)
            for left in range(-4, 5)
            if np.array_equal(out, padded[2 + top : 12 + top, 4 + left : 24 + left])
        ]
        assert len(matches) == 1
        shifts.update(matches)
    assert len(shifts) == 5 * 9


def numpy_rotation(image, degrees, fill):
    """Bilinear rotation by inverse mapping: output pixel centre p samples the input at
    R(-degrees)(p - c) + c, c the image centre, y pointing down; with the mask of outputs whose
    sample lies between the input's outer pixel centres."""
    height, width, _ = image.shape
    theta = np.deg2rad(degrees)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    dx, dy = xs - width / 2, ys - height / 2
    source_x = np.cos(theta) * dx - np.sin(theta) * dy + width / 2 - 0.5
    source_y = np.sin(theta) * dx + np.cos(theta) * dy + height / 2 - 0.5
    x0, y0 = np.floor(source_x).astype(int), np.floor(source_y).astype(int)
    wx, wy = (source_x - x0)[..., None], (source_y - y0)[..., None]
    padded = np.pad(image.astype(float), ((1, 1), (1, 1), (0, 0)), constant_values=fill)

    def at(y, x):
        return padded[np.clip(y + 1, 0, height + 1), np.clip(x + 1, 0, width + 1)]

    out = (1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x0 + 1)) + wy * (
        (1 - wx) * at(y0 + 1, x0) + wx * at(y0 + 1, x0 + 1)
    )
    inside = (source_x >= 0) & (source_x <= width - 1) & (source_y >= 0) & (source_y <= height - 1)
    return out, inside


class FixedDraws:
    """A generator stand-in whose uniform draws return fixed values."""

    def __init__(self, value):
        self.value = value

    def uniform(self, low, high):
        return np.asarray(self.value) if np.ndim(low) else self.value


def test_rotation_matches_a_numpy_bilinear_rotation():
    image = random_image(11, 14)
    for seed in range(5):
        angle = np.random.default_rng(seed).uniform(-40, 40)
        out = random_rotation(image, np.random.default_rng(seed), max_degrees=40, fill=9)
        expected, inside = numpy_rotation(image, angle, 9)
        assert inside.mean() > 0.5
        assert np.abs(out[inside] - expected[inside]).max() <= 1  # PIL rounds in fixed point
    # Known values: a quarter turn of a square is np.rot90 (counter-clockwise); corners fill.
    square = random_image(8, 8, channels=1)
    np.testing.assert_array_equal(random_rotation(square, FixedDraws(90.0)), np.rot90(square))
    assert (random_rotation(image, FixedDraws(45.0), fill=9)[0, 0] == 9).all()
    np.testing.assert_array_equal(random_rotation(image, FixedDraws(0.0)), image)


def test_resized_crop_takes_its_area_and_aspect_ratio_options():
    image = random_image(20, 20)
    whole = train_transform(
        "resized_crop",
        image_size=10,
        resized_crop={"area_range": (1, 1), "aspect_ratio_range": (1, 1)},
    )
    expected = np.asarray(Image.fromarray(image).resize((10, 10), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(whole(image, np.random.default_rng(0)), expected)
    for seed in range(100):
        box = sample_crop_box(40, 40, np.random.default_rng(seed), (0.25, 0.25), (1, 1))
        assert box[2:] == (20, 20)


def test_gaussian_noise_has_the_stated_std_and_no_bias():
    # std 0.04 of 255 = 10.2 levels, plus rounding's 1/12 variance; 64*64*3 samples: the sample
    # std is within 2% (about 5 standard errors) and the mean within 0.5 levels.
    grey = np.full((64, 64, 3), 128, np.uint8)
    out = gaussian_noise(grey, np.random.default_rng(0), std=0.04).astype(float) - 128
    assert abs(out.std() - math.sqrt(10.2**2 + 1 / 12)) < 0.02 * 10.2
    assert abs(out.mean()) < 0.5
    # Independent per channel; clipped, not wrapped, at the ends of the range.
    assert abs(np.corrcoef(out[..., 0].ravel(), out[..., 1].ravel())[0, 1]) < 0.05
    white = gaussian_noise(np.full((32, 32, 1), 255, np.uint8), np.random.default_rng(1), std=0.1)
    assert white.min() > 128 and (white == 255).mean() > 0.4
    np.testing.assert_array_equal(gaussian_noise(grey, np.random.default_rng(2), std=0.0), grey)


def cutout_reference(image, row, column, length, fill):
    """Pixels (i, j) with row - length // 2 <= i < row - length // 2 + length, same for j."""
    rows, columns = np.indices(image.shape[:2])
    first_row, first_column = row - length // 2, column - length // 2
    covered = (rows >= first_row) & (rows < first_row + length)
    covered &= (columns >= first_column) & (columns < first_column + length)
    return np.where(covered[..., None], fill, image)


def test_cutout_is_the_documented_square():
    image = random_image(9, 11)
    for seed in range(50):
        row, column = np.random.default_rng(seed).integers(0, [9, 11])
        for length in (4, 5):
            out = cutout(image, np.random.default_rng(seed), length=length, fill=3)
            np.testing.assert_array_equal(out, cutout_reference(image, row, column, length, 3))


def test_cutout_area_averages_to_its_clipped_expectation():
    # Centre uniform over the pixels: the expected area is the product of the expected covered
    # rows and columns, enumerated here; 3000 draws bring the mean within 2% of it.
    height, width, length = 12, 16, 6

    def covered(side):
        starts = np.arange(side) - length // 2
        return np.mean(np.minimum(starts + length, side) - np.maximum(starts, 0))

    expected = covered(height) * covered(width)
    black = np.zeros((height, width, 1), np.uint8)
    areas = [
        (cutout(black, np.random.default_rng(s), length=length, fill=1) == 1).sum()
        for s in range(3000)
    ]
    assert abs(np.mean(areas) - expected) < 0.02 * expected
    assert max(areas) == length**2  # a square away from the border is whole


def test_random_erasing_rate_area_and_aspect_ratio():
    # Draws that erase: about `probability` of them (4000 draws, 4 standard deviations); each
    # erased region a random-valued rectangle whose area and aspect ratio (height/width) lie in
    # the ranges, up to rounding to whole pixels.
    image = np.full((30, 30, 3), 128, np.uint8)
    erased = 0
    for seed in range(4000):
        out = random_erasing(image, np.random.default_rng(seed), probability=0.3)
        changed = (out != image).any(axis=2)
        if not changed.any():
            continue
        erased += 1
        rows, columns = np.nonzero(changed)
        height = rows.max() - rows.min() + 1
        width = columns.max() - columns.min() + 1
        assert 0.02 * 0.8 <= height * width / 900 <= 0.4 * 1.2
        assert 0.3 * 0.8 <= height / width <= 1 / 0.3 * 1.25
        assert changed.sum() > 0.9 * height * width  # its pixels differ, bar chance agreements
    assert abs(erased / 4000 - 0.3) < 0.03


def test_random_erasing_fills_uniform_values_or_gives_up():
    image = np.zeros((40, 40, 3), np.uint8)
    outputs = [random_erasing(image, np.random.default_rng(s), probability=1.0) for s in range(20)]
    values = np.concatenate([out[(out != 0).any(axis=2)].ravel() for out in outputs])
    assert abs(values.mean() - 127.5) < 3 and values.max() == 255  # uniform in [0, 255]
    # A 1-pixel-high image fits no box of aspect ratio >= 0.3 and 2% of its area: unchanged.
    strip = random_image(1, 100)
    assert random_erasing(strip, np.random.default_rng(0), probability=1.0) is strip


@pytest.mark.parametrize(
    "factors, enhancer, index",
    [
        ((1.3, 1.0, 1.0), ImageEnhance.Brightness, 0),
        ((0.6, 1.0, 1.0), ImageEnhance.Brightness, 0),
        ((1.0, 1.4, 1.0), ImageEnhance.Contrast, 1),
        ((1.0, 0.7, 1.0), ImageEnhance.Contrast, 1),
        ((1.0, 1.0, 1.4), ImageEnhance.Color, 2),
        ((1.0, 1.0, 0.0), ImageEnhance.Color, 2),
    ],
)
def test_color_jitter_matches_pil_image_enhance(factors, enhancer, index):
    # Channels of unequal means, so that the mean luma differs from the mean of the pixels.
    image = (random_image(16, 20) * np.array([1.0, 0.5, 0.2])).astype(np.uint8)
    expected = np.asarray(enhancer(Image.fromarray(image)).enhance(factors[index])).astype(int)
    out = color_jitter(image, FixedDraws(factors)).astype(int)
    assert np.abs(out - expected).max() <= 1  # PIL rounds the mean grey and each blend


def test_color_jitter_draws_factors_in_its_ranges():
    # Strength 0 draws a factor of exactly 1; brightness on a constant image shows its factor.
    image = random_image(6, 7)
    np.testing.assert_array_equal(
        color_jitter(image, np.random.default_rng(0), brightness=0, contrast=0, saturation=0), image
    )
    grey = np.full((4, 4, 3), 100, np.uint8)
    factors = [
        color_jitter(grey, np.random.default_rng(s), contrast=0, saturation=0)[0, 0, 0] / 100
        for s in range(2000)
    ]
    assert 0.6 <= min(factors) < 0.62 and 1.38 < max(factors) <= 1.4
    assert abs(np.mean(factors) - 1.0) < 0.02
    # A grey image keeps one channel and has no saturation.
    plain = random_image(5, 5, channels=1)
    out = color_jitter(plain, np.random.default_rng(0), brightness=0, contrast=0)
    np.testing.assert_array_equal(out, plain)


def test_option_blocks_are_the_keyword_defaults_and_each_option_has_a_range():
    defaults = option_defaults()
    # crop's padding is a dataset field
    assert set(defaults) == set(AUGMENTATIONS) - {"crop"} | set(MIXINGS)
    functions = {name: entry.train for name, entry in AUGMENTATIONS.items()}
    for name, block in defaults.items():
        parameters = inspect.signature({**functions, **MIXINGS}[name]).parameters
        for option, default in block.items():
            assert OPTION_RANGES[option].admits(default), (name, option)
            # A float option defaults to a float, so that a config override of it parses.
            annotation = parameters[option].annotation
            assert isinstance(default, getattr(annotation, "__origin__", annotation))
    check_options(defaults)


@pytest.mark.parametrize(
    "spec, options, message",
    [
        (
            "crop_flip,cutuot",
            {},
            "unknown augmentation 'cutuot' in augment 'crop_flip,cutuot'; valid: none, crop,"
            " crop_flip, resized_crop_flip, flip, translate, rotate, resized_crop,"
            " gaussian_noise, cutout, random_erasing, color_jitter, mixup, cutmix (several:"
            " comma-separated, applied in order)",
        ),
        ("crop_flip,", {}, "unknown augmentation '' in augment 'crop_flip,'"),
        ("cutmx", {}, "unknown augmentation 'cutmx'"),
        (
            "cutout",
            {"cutout": {"size": 8}},
            "unknown option(s) 'size' for augmentation 'cutout'; valid options: length, fill",
        ),
        (
            "cutout",
            {"cutuot": {"length": 8}},
            "augment_kwargs has no block 'cutuot'; augmentations with options: flip, translate,"
            " rotate, resized_crop, gaussian_noise, cutout, random_erasing, color_jitter, mixup,"
            " cutmix",
        ),
        ("cutout", {"cutout": {"length": 0}}, "augment_kwargs.cutout.length=0 must be a positive"),
        ("flip", {"flip": {"probability": 1.5}}, "flip.probability=1.5 must lie in [0, 1]"),
        ("rotate", {"rotate": {"fill": 256}}, "rotate.fill=256 must be a whole number in [0, 255]"),
        (
            "random_erasing",
            {"random_erasing": {"area_range": (0.5, 0.1)}},
            "area_range=(0.5, 0.1) must be (low, high) with 0 < low <= high <= 1",
        ),
        (
            "resized_crop",
            {"resized_crop": {"aspect_ratio_range": (0, 1)}},
            "aspect_ratio_range=(0, 1) must be (low, high) with 0 < low <= high",
        ),
    ],
)
def test_typos_and_bad_values_are_refused_in_one_line(spec, options, message):
    with pytest.raises(UsageError) as error:
        make_augmentation(spec, crop_padding=4, image_size=8, options=options)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_only_a_train_transform_without_steps_draws_nothing():
    # The pipeline seeds no generator for `none` (random False) and passes None instead.
    none = make_augmentation("none", crop_padding=2, image_size=4)
    assert not none.random and none.train(np.zeros((2, 2, 1), np.uint8), None).shape == (2, 2, 1)
    assert not make_augmentation("none,mixup", crop_padding=2, image_size=4).random
    for spec in ("crop_flip", "cutout", "resized_crop_flip"):
        assert make_augmentation(spec, crop_padding=2, image_size=4).random

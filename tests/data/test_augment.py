"""Each augmentation against a NumPy/PIL reference or the property that defines it."""

import math

import numpy as np
import pytest
from PIL import Image

from bnresearch.data.augment import (
    AUGMENTATION_NAMES,
    crop_flip,
    horizontal_flip,
    make_augmentation,
    normalize,
    random_resized_crop_flip,
    resize_and_center_crop,
    sample_crop_box,
)


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
    assert AUGMENTATION_NAMES == ("none", "crop", "crop_flip", "resized_crop_flip")
    image = random_image(12, 12)
    none = make_augmentation("none", crop_padding=4, image_size=8)
    assert none.train(image, np.random.default_rng(0)) is image and none.eval(image) is image
    crop = make_augmentation("crop_flip", crop_padding=4, image_size=8)
    assert crop.output_size is None and crop.eval(image) is image
    resized = make_augmentation("resized_crop_flip", crop_padding=4, image_size=8)
    assert resized.output_size == 8 and resized.eval(image).shape == (8, 8, 3)
    shift = make_augmentation("crop", crop_padding=1, image_size=8)
    assert shift.output_size is None and shift.eval(image) is image
    with pytest.raises(ValueError, match="unknown augmentation 'cutout'; valid: none, crop, "):
        make_augmentation("cutout", crop_padding=4, image_size=8)


def test_normalize_matches_the_formula():
    images = random_image(4 * 5, 6, channels=3).reshape(4, 5, 6, 3)
    mean, std = np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.3, 0.4])
    out = normalize(images, mean, std)
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(out, (images / 255 - mean) / std, rtol=1e-6, atol=1e-6)
    assert math.isclose(
        float(normalize(np.full((1, 1, 1, 1), 255, np.uint8), [0.5], [0.25])[0, 0, 0, 0]), 2.0
    )

"""Image augmentations: pure functions of one uint8 (H, W, C) image.

Random functions draw only from the ``np.random.Generator`` they are given, so the pipeline can
derive that generator from (seed, example position) and stay deterministic. Every function
returns uint8; conversion to float happens once per batch in ``normalize``, vectorized.

Recipes by name (``make_augmentation``):
- ``none``: identity at train and eval.
- ``crop`` (digits): zero-pad, random crop back to the input size, i.e. a random shift of at
  most ``crop_padding`` pixels; no flip, which would turn a digit into another glyph. Eval:
  identity.
- ``crop_flip`` (CIFAR-style): zero-pad, random crop back to the input size, flip with p=0.5.
  Eval: identity.
- ``resized_crop_flip`` (Inception/ImageNet-style): random resized crop to image_size (PIL
  bilinear), flip with p=0.5. Eval: shorter side to image_size/0.875, centre crop image_size.
"""

import dataclasses
import functools
import math
from typing import Callable

import numpy as np
from PIL import Image

FLIP_PROBABILITY = 0.5
# Inception's random resized crop: 8%..100% of the area, aspect ratio log-uniform in [3/4, 4/3].
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
# Eval crops the central 87.5% of the shorter side (the ResNet convention: 256 -> 224).
EVAL_CROP_FRACTION = 0.875


def horizontal_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirrors left-right with probability FLIP_PROBABILITY (one draw from rng)."""
    if rng.random() < FLIP_PROBABILITY:
        return image[:, ::-1]
    return image


def pad_and_random_crop(image: np.ndarray, rng: np.random.Generator, padding: int) -> np.ndarray:
    """A random (H, W) window of the image zero-padded by ``padding`` on each side.

    Draws the top offset, then the left offset, each uniform in [0, 2 * padding]. Copies the
    window's overlap with the image into zeros instead of padding: np.pad costs 4x more here.
    """
    height, width = image.shape[:2]
    top, left = rng.integers(0, 2 * padding + 1, size=2) - padding  # shifts, in [-p, p]
    window = np.zeros_like(image)
    window[max(0, -top) : height - max(0, top), max(0, -left) : width - max(0, left)] = image[
        max(0, top) : height + min(0, top), max(0, left) : width + min(0, left)
    ]
    return window


def crop_flip(image: np.ndarray, rng: np.random.Generator, *, padding: int) -> np.ndarray:
    """CIFAR-style train augmentation: pad, random crop to the input size, random flip."""
    return horizontal_flip(pad_and_random_crop(image, rng, padding), rng)


def sample_crop_box(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Inception-style crop box (top, left, crop_height, crop_width) inside a height x width image.

    Up to CROP_ATTEMPTS times: draw an area fraction uniform in CROP_AREA_RANGE and an aspect
    ratio log-uniform in CROP_ASPECT_RATIO_RANGE; keep the first box that fits, at a uniform
    position. If none fits, the largest centred box whose aspect ratio is in range.
    """
    log_ratio_low, log_ratio_high = (math.log(r) for r in CROP_ASPECT_RATIO_RANGE)
    for _ in range(CROP_ATTEMPTS):
        target_area = height * width * rng.uniform(*CROP_AREA_RANGE)
        aspect_ratio = math.exp(rng.uniform(log_ratio_low, log_ratio_high))
        crop_width = round(math.sqrt(target_area * aspect_ratio))
        crop_height = round(math.sqrt(target_area / aspect_ratio))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(rng.integers(0, height - crop_height + 1))
            left = int(rng.integers(0, width - crop_width + 1))
            return top, left, crop_height, crop_width
    return central_crop_box(height, width)


def central_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """The largest centred box whose aspect ratio (width/height) is in CROP_ASPECT_RATIO_RANGE."""
    min_ratio, max_ratio = CROP_ASPECT_RATIO_RANGE
    crop_height, crop_width = height, width
    if width / height < min_ratio:
        crop_height = round(width / min_ratio)
    elif width / height > max_ratio:
        crop_width = round(height * max_ratio)
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """PIL bilinear resize (antialiased when shrinking) of a uint8 (H, W, C) image."""
    channels = image.shape[2]
    pil_image = Image.fromarray(image[:, :, 0] if channels == 1 else image)
    resized = pil_image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized).reshape(height, width, channels)


def random_resized_crop_flip(
    image: np.ndarray, rng: np.random.Generator, *, size: int
) -> np.ndarray:
    """ImageNet-style train augmentation: Inception crop, resize to size x size, random flip.

    The crop is cut out before resizing, so pixels outside it never blend into its border.
    """
    top, left, height, width = sample_crop_box(image.shape[0], image.shape[1], rng)
    crop = image[top : top + height, left : left + width]
    return horizontal_flip(resize(crop, size, size), rng)


def resize_and_center_crop(image: np.ndarray, *, size: int) -> np.ndarray:
    """ImageNet-style eval: shorter side to round(size / EVAL_CROP_FRACTION), centre size x size.

    The longer side keeps the aspect ratio (rounded); the crop offset is floor((side - size) / 2).
    """
    height, width = image.shape[:2]
    shorter_side = round(size / EVAL_CROP_FRACTION)
    scale = shorter_side / min(height, width)
    resized_height = max(shorter_side, round(height * scale))
    resized_width = max(shorter_side, round(width * scale))
    resized = resize(image, resized_height, resized_width)
    top = (resized_height - size) // 2
    left = (resized_width - size) // 2
    return resized[top : top + size, left : left + size]


def identity(image: np.ndarray) -> np.ndarray:
    """The eval transform of recipes that see images at their stored size."""
    return image


def identity_with_rng(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The train transform of ``none``: draws nothing."""
    del rng
    return image


def normalize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Per-channel (x/255 - mean)/std of uint8 images (N, H, W, C), as float32."""
    count, height, width, channels = images.shape
    # Rows of W*C values with the per-channel constants tiled along them: broadcasting a length-C
    # vector instead runs NumPy's inner loop C elements at a time, about 7x slower.
    scale = np.tile(1.0 / (255.0 * np.asarray(std)), width).astype(np.float32)
    offset = np.tile(np.asarray(mean) / np.asarray(std), width).astype(np.float32)
    rows = images.reshape(count * height, width * channels).astype(np.float32)
    rows *= scale
    rows -= offset
    return rows.reshape(images.shape)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """A train transform (image, rng) -> image and its deterministic eval transform.

    output_size: the side of the square images both transforms return, or None when they
    return images at the size they receive.
    """

    name: str
    train: Callable[[np.ndarray, np.random.Generator], np.ndarray]
    eval: Callable[[np.ndarray], np.ndarray]
    output_size: int | None


def _no_augmentation(*, crop_padding: int, image_size: int) -> Augmentation:
    del crop_padding, image_size
    return Augmentation("none", identity_with_rng, identity, None)


def _crop(*, crop_padding: int, image_size: int) -> Augmentation:
    del image_size
    return Augmentation(
        "crop", functools.partial(pad_and_random_crop, padding=crop_padding), identity, None
    )


def _crop_flip(*, crop_padding: int, image_size: int) -> Augmentation:
    del image_size
    return Augmentation(
        "crop_flip", functools.partial(crop_flip, padding=crop_padding), identity, None
    )


def _resized_crop_flip(*, crop_padding: int, image_size: int) -> Augmentation:
    del crop_padding
    return Augmentation(
        "resized_crop_flip",
        functools.partial(random_resized_crop_flip, size=image_size),
        functools.partial(resize_and_center_crop, size=image_size),
        image_size,
    )


_RECIPES = {
    "none": _no_augmentation,
    "crop": _crop,
    "crop_flip": _crop_flip,
    "resized_crop_flip": _resized_crop_flip,
}
AUGMENTATION_NAMES = tuple(_RECIPES)


def make_augmentation(name: str, *, crop_padding: int, image_size: int) -> Augmentation:
    """The recipe ``name`` (one of AUGMENTATION_NAMES) with its parameters bound."""
    if name not in _RECIPES:
        raise ValueError(f"unknown augmentation {name!r}; valid: {', '.join(AUGMENTATION_NAMES)}")
    return _RECIPES[name](crop_padding=crop_padding, image_size=image_size)

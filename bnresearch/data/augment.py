"""Image augmentations: pure functions of one uint8 (H, W, C) image, composable by name.

Random functions draw only from the ``np.random.Generator`` they are given, so the pipeline can
derive that generator from (seed, example position, copy) and stay deterministic; a composition
passes the same generator along, each step drawing after the one before. Every augmentation
returns uint8 and leaves its input unchanged; conversion to float happens once per batch in
``normalize``, vectorized.

``dataset.augment`` names one augmentation or several, comma-separated, applied in order
(``"crop_flip,cutout"``). Each step's options come from its block of ``dataset.augment_kwargs``
(``augment_kwargs.cutout.length``), whose defaults are the keyword defaults of the functions
below; two parameters predate the block and stay dataset fields: crop's ``padding`` is
``dataset.crop_padding`` and resized_crop's ``size`` is ``dataset.image_size``.

Augmentations (``AUGMENTATIONS``):
- ``flip``: mirror left-right with probability ``probability``.
- ``crop``: zero-pad by ``padding``, random crop back to the input size (a random shift).
- ``translate``: random shift by up to ``max_fraction`` of each side, uncovered pixels ``fill``.
- ``rotate``: rotation by an angle uniform in [-max_degrees, max_degrees] (PIL, bilinear).
- ``resized_crop``: Inception crop (area and aspect ratio in ranges), resized to ``size``.
  Eval: shorter side to size/0.875, centre crop ``size``.
- ``gaussian_noise``: additive N(0, std^2) per pixel and channel, std in x/255 units.
- ``cutout``: one ``fill`` square (DeVries & Taylor 2017).
- ``random_erasing``: one random-valued rectangle, with probability (Zhong et al. 2017).
- ``color_jitter``: random brightness, contrast and saturation factors.
Every one but resized_crop keeps the image size and is the identity at evaluation.

Mixings (``MIXINGS``; not Hoffer et al.'s batch augmentation, which repeats examples) mix the
examples of a finished batch: pure functions of float (N, H, W, C) images, normalized, and a
generator, that return the mixed images, each example's partner (an index into the batch) and
the weight of its own label. They come last in ``augment`` (``"crop_flip,mixup"``), one at
most, and never apply at evaluation; the pipeline draws one generator per local batch
(``pipeline.py``), and the loss mixes the targets as the images (``train/steps.py``).
- ``mixup``: x_i lam + x_j (1 - lam), lam ~ Beta(alpha, alpha) (Zhang et al. 2017).
- ``cutmix``: with probability ``probability``, a box of x_j pasted into x_i, its area about
  (1 - lam) of the image, lam ~ Beta(alpha, alpha); weight: the box's area as pasted (Yun et
  al. 2019).
The two together are refused rather than alternated: the papers define each alone. Host cost on
one loaded core (docs/data.md): a 128 x 32 x 32 x 3 batch, normalize 0.28 ms, mixup 1.4 ms,
cutmix 0.33 ms; 256 x 224 x 224 x 3, normalize 73 ms, mixup 140 ms, cutmix 71 ms.

Recipes (``RECIPES``), names for fixed compositions that configs have used all along: ``none``
(no step), ``crop_flip`` (crop, flip: CIFAR-style), ``resized_crop_flip`` (resized_crop, flip:
Inception/ImageNet-style).
"""

import dataclasses
import functools
import inspect
import math
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np
from PIL import Image

from bnresearch.config.ranges import NOT_NEGATIVE, POSITIVE, POSITIVE_WHOLE, Range
from bnresearch.errors import UsageError

# Inception's random resized crop: 8%..100% of the area, aspect ratio log-uniform in [3/4, 4/3].
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
# Tries at a box that fits before the fallback (Inception's crop) or giving up (random erasing).
BOX_ATTEMPTS = 10
# Eval crops the central 87.5% of the shorter side (the ResNet convention: 256 -> 224).
EVAL_CROP_FRACTION = 0.875
# ITU-R 601-2 luma, the weights of PIL's convert("L"): the grey of colour jitter.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


def horizontal_flip(
    image: np.ndarray, rng: np.random.Generator, *, probability: float = 0.5
) -> np.ndarray:
    """Mirrors left-right with probability ``probability`` (one draw from rng)."""
    if rng.random() < probability:
        return image[:, ::-1]
    return image


def shifted_window(image: np.ndarray, top: int, left: int, fill: int) -> np.ndarray:
    """The (H, W) window of the image whose corner is at (top, left), pixels outside it ``fill``.

    Copies the window's overlap with the image into a filled array instead of padding:
    np.pad costs 4x more here.
    """
    height, width = image.shape[:2]
    window = np.full_like(image, fill)
    window[max(0, -top) : height - max(0, top), max(0, -left) : width - max(0, left)] = image[
        max(0, top) : height + min(0, top), max(0, left) : width + min(0, left)
    ]
    return window


def pad_and_random_crop(image: np.ndarray, rng: np.random.Generator, *, padding: int) -> np.ndarray:
    """A random (H, W) window of the image zero-padded by ``padding`` on each side.

    Draws the top offset, then the left offset, each uniform in [0, 2 * padding].
    """
    top, left = rng.integers(0, 2 * padding + 1, size=2) - padding  # shifts, in [-p, p]
    return shifted_window(image, top, left, 0)


def random_translation(
    image: np.ndarray, rng: np.random.Generator, *, max_fraction: float = 0.125, fill: int = 0
) -> np.ndarray:
    """The image shifted by whole pixels, uniform in [-m, m] along each side, m the floor of
    max_fraction times that side; the pixels it uncovers are ``fill``.

    crop is this with m = padding on both sides and fill 0; translate scales with the image.
    """
    height, width = image.shape[:2]
    most = np.array([int(max_fraction * height), int(max_fraction * width)])
    top, left = rng.integers(-most, most + 1)
    return shifted_window(image, top, left, fill)


def _pil_image(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)


def _from_pil(pil_image: Image.Image, channels: int) -> np.ndarray:
    pixels = np.asarray(pil_image)
    return pixels.reshape(*pixels.shape[:2], channels)


def random_rotation(
    image: np.ndarray, rng: np.random.Generator, *, max_degrees: float = 15.0, fill: int = 0
) -> np.ndarray:
    """Rotation about the centre by an angle uniform in [-max_degrees, max_degrees] (positive:
    counter-clockwise), PIL bilinear, at the input size; corners it uncovers are ``fill``."""
    angle = rng.uniform(-max_degrees, max_degrees)
    channels = image.shape[2]
    fill_colour = fill if channels == 1 else (fill,) * channels
    rotated = _pil_image(image).rotate(
        angle, resample=Image.Resampling.BILINEAR, fillcolor=fill_colour
    )
    return _from_pil(rotated, channels)


def sample_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    area_range: tuple[float, float] = CROP_AREA_RANGE,
    aspect_ratio_range: tuple[float, float] = CROP_ASPECT_RATIO_RANGE,
) -> tuple[int, int, int, int]:
    """Inception-style crop box (top, left, crop_height, crop_width) inside a height x width image.

    Up to BOX_ATTEMPTS times: draw an area fraction uniform in ``area_range`` and an aspect
    ratio (width/height) log-uniform in ``aspect_ratio_range``; keep the first box that fits,
    at a uniform position. If none fits, the largest centred box whose aspect ratio is in range.
    """
    log_ratio_low, log_ratio_high = (math.log(r) for r in aspect_ratio_range)
    for _ in range(BOX_ATTEMPTS):
        target_area = height * width * rng.uniform(*area_range)
        aspect_ratio = math.exp(rng.uniform(log_ratio_low, log_ratio_high))
        crop_width = round(math.sqrt(target_area * aspect_ratio))
        crop_height = round(math.sqrt(target_area / aspect_ratio))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(rng.integers(0, height - crop_height + 1))
            left = int(rng.integers(0, width - crop_width + 1))
            return top, left, crop_height, crop_width
    return central_crop_box(height, width, aspect_ratio_range)


def central_crop_box(
    height: int, width: int, aspect_ratio_range: tuple[float, float] = CROP_ASPECT_RATIO_RANGE
) -> tuple[int, int, int, int]:
    """The largest centred box whose aspect ratio (width/height) is in ``aspect_ratio_range``."""
    min_ratio, max_ratio = aspect_ratio_range
    crop_height, crop_width = height, width
    if width / height < min_ratio:
        crop_height = round(width / min_ratio)
    elif width / height > max_ratio:
        crop_width = round(height * max_ratio)
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """PIL bilinear resize (antialiased when shrinking) of a uint8 (H, W, C) image."""
    resized = _pil_image(image).resize((width, height), Image.Resampling.BILINEAR)
    return _from_pil(resized, image.shape[2])


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    size: int,
    area_range: tuple[float, float] = CROP_AREA_RANGE,
    aspect_ratio_range: tuple[float, float] = CROP_ASPECT_RATIO_RANGE,
) -> np.ndarray:
    """Inception's crop (``sample_crop_box``), resized to size x size (Szegedy et al. 2015).

    The crop is cut out before resizing, so pixels outside it never blend into its border.
    """
    top, left, height, width = sample_crop_box(
        image.shape[0], image.shape[1], rng, area_range, aspect_ratio_range
    )
    return resize(image[top : top + height, left : left + width], size, size)


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


def gaussian_noise(image: np.ndarray, rng: np.random.Generator, *, std: float = 0.05) -> np.ndarray:
    """x + N(0, (255 std)^2), independently per pixel and channel, rounded and clipped to uint8.

    ``std`` is in x/255 units, like the datasets' mean and std.
    """
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    noise *= 255 * std
    noise += image
    return np.clip(np.rint(noise), 0, 255).astype(np.uint8)


def cutout(
    image: np.ndarray, rng: np.random.Generator, *, length: int = 16, fill: int = 0
) -> np.ndarray:
    """One length x length square set to ``fill`` (DeVries & Taylor 2017, arXiv:1708.04552).

    Its centre is uniform over the pixels (row, then column drawn); rows from centre -
    length // 2 on, cut at the border, so near a border less than the square is covered. The
    paper zeroes normalized pixels, the mean colour: fill = 255 x the dataset mean does that.
    """
    height, width = image.shape[:2]
    row, column = rng.integers(0, [height, width])
    top, left = row - length // 2, column - length // 2
    out = image.copy()
    out[max(0, top) : top + length, max(0, left) : left + length] = fill
    return out


def random_erasing(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    probability: float = 0.5,
    area_range: tuple[float, float] = (0.02, 0.4),
    aspect_ratio_range: tuple[float, float] = (0.3, 1 / 0.3),
) -> np.ndarray:
    """With probability ``probability``, one rectangle of random pixels (Zhong et al. 2017,
    arXiv:1708.04896).

    As the paper: area fraction uniform in ``area_range``, aspect ratio r = height/width
    uniform in ``aspect_ratio_range``, height sqrt(area r), width sqrt(area / r), each pixel and
    channel uniform in [0, 255]. The paper draws a position and retries until the rectangle
    fits; here, as torchvision, up to BOX_ATTEMPTS sizes are drawn and the first that fits is
    placed uniformly; if none fits the image is left as it is.
    """
    if rng.random() >= probability:
        return image
    height, width, channels = image.shape
    for _ in range(BOX_ATTEMPTS):
        area = height * width * rng.uniform(*area_range)
        ratio = rng.uniform(*aspect_ratio_range)
        box_height, box_width = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < box_height <= height and 0 < box_width <= width:
            top, left = rng.integers(0, [height - box_height + 1, width - box_width + 1])
            out = image.copy()
            out[top : top + box_height, left : left + box_width] = rng.integers(
                0, 256, (box_height, box_width, channels), dtype=np.uint8
            )
            return out
    return image


def _grey(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 1) luma of float (H, W, 3) pixels."""
    return (pixels @ LUMA_WEIGHTS)[:, :, None]


def color_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
) -> np.ndarray:
    """Brightness, contrast, then saturation, each by a factor f uniform in [max(0, 1 - s),
    1 + s] for its strength s (drawn in that order), as torchvision's ColorJitter (fixed order).

    Each blends x with a degenerate image d as d + f (x - d), clipped to [0, 255], as PIL's
    ImageEnhance: black for brightness, the mean luma for contrast, the pixel's luma for
    saturation (a one-channel image has none); rounded to uint8 once, at the end.
    """
    low_brightness, low_contrast, low_saturation = (
        max(0.0, 1 - s) for s in (brightness, contrast, saturation)
    )
    factors = rng.uniform(
        [low_brightness, low_contrast, low_saturation],
        [1 + brightness, 1 + contrast, 1 + saturation],
    ).astype(np.float32)
    pixels = np.clip(image * factors[0], 0, 255)
    grey = _grey(pixels) if image.shape[2] == 3 else pixels
    mean = grey.mean()
    pixels = np.clip(mean + factors[1] * (pixels - mean), 0, 255)
    if image.shape[2] == 3:
        grey = _grey(pixels)
        pixels = np.clip(grey + factors[2] * (pixels - grey), 0, 255)
    return np.rint(pixels).astype(np.uint8)


def identity(image: np.ndarray) -> np.ndarray:
    """The eval transform of augmentations that see images at their stored size."""
    return image


def identity_with_rng(image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """The train transform of ``none``: draws nothing, so it accepts no generator too."""
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


def mixup(
    images: np.ndarray, rng: np.random.Generator, *, alpha: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mixed images, partners, weights) of mixup (Zhang et al. 2017, arXiv:1710.09412).

    As the paper's code: one lam ~ Beta(alpha, alpha), then one permutation of the batch (in
    that order from rng); example i becomes lam x_i + (1 - lam) x_partner(i), its label's
    weight lam. alpha = 1 (lam uniform) is the paper's CIFAR value, 0.2 its ImageNet one.
    """
    weight = np.float32(rng.beta(alpha, alpha))
    partners = rng.permutation(len(images))
    # float32 throughout: a float64 scalar would promote the batch to float64 (NumPy 2).
    mixed = images[partners]
    mixed *= 1 - weight
    mixed += weight * images
    return mixed, partners, np.full(len(images), weight)


def cutmix_box(
    height: int, width: int, lam: float, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of CutMix's box: sides floor(side sqrt(1 - lam)), so an area
    of about (1 - lam) of the image; centre uniform over the pixels (row, then column drawn);
    rows from centre - box height // 2 on, as cutout, cut at the border."""
    box_height, box_width = (int(side * math.sqrt(1 - lam)) for side in (height, width))
    row, column = rng.integers(0, [height, width])
    top, left = row - box_height // 2, column - box_width // 2
    return max(0, top), min(height, top + box_height), max(0, left), min(width, left + box_width)


def cutmix(
    images: np.ndarray, rng: np.random.Generator, *, alpha: float = 1.0, probability: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mixed images, partners, weights) of CutMix (Yun et al. 2019, arXiv:1905.04899).

    As the paper's code, drawn from rng in this order: with probability ``probability`` (else
    the batch is returned unmixed: partners themselves, weights 1), lam ~ Beta(alpha, alpha),
    one permutation of the batch, then ``cutmix_box``; the box of x_partner(i) replaces the same
    box of x_i, and the weight of i's label is 1 - (box area as cut at the border) / (H W).
    Defaults: the code's CIFAR command (alpha 1, probability 0.5; its ImageNet one uses 1.0).
    Unlike that code, a box side keeps its length (it makes odd sides one pixel shorter); the
    weight counts the pixels pasted either way.
    """
    count, height, width = images.shape[:3]
    if rng.random() >= probability:
        return images, np.arange(count), np.ones(count, np.float32)
    lam = rng.beta(alpha, alpha)
    partners = rng.permutation(count)
    top, bottom, left, right = cutmix_box(height, width, lam, rng)
    mixed = images.copy()
    mixed[:, top:bottom, left:right] = images[partners, top:bottom, left:right]
    pasted = (bottom - top) * (right - left) / (height * width)
    return mixed, partners, np.full(count, 1 - pasted, np.float32)


@dataclasses.dataclass(frozen=True)
class _Entry:
    """A named augmentation: ``train`` (image, rng, **parameters) -> image, and for one that
    resizes to ``dataset.image_size`` its eval transform (image, *, size) -> image."""

    train: Callable[..., np.ndarray]
    resized_eval: Callable[..., np.ndarray] | None = None


AUGMENTATIONS = {
    "flip": _Entry(horizontal_flip),
    "crop": _Entry(pad_and_random_crop),
    "translate": _Entry(random_translation),
    "rotate": _Entry(random_rotation),
    "resized_crop": _Entry(random_resized_crop, resize_and_center_crop),
    "gaussian_noise": _Entry(gaussian_noise),
    "cutout": _Entry(cutout),
    "random_erasing": _Entry(random_erasing),
    "color_jitter": _Entry(color_jitter),
}
# Mixings: (images (N, H, W, C) float32, rng) -> (images, partners, weights).
MIXINGS = {"mixup": mixup, "cutmix": cutmix}
RECIPES = {"none": (), "crop_flip": ("crop", "flip"), "resized_crop_flip": ("resized_crop", "flip")}
# All names, as errors list them: the recipes that configs have used all along first, the
# mixings last, where they go in a composition.
AUGMENTATION_NAMES = (
    ("none", "crop", "crop_flip", "resized_crop_flip")
    + tuple(name for name in AUGMENTATIONS if name != "crop")
    + tuple(MIXINGS)
)
# Parameters the dataset block sets itself (fields older than augment_kwargs), not options.
DATASET_PARAMETERS = {"padding": "crop_padding", "size": "image_size"}


@dataclasses.dataclass(frozen=True)
class _Interval:
    """Valid (low, high) options: two numbers that ``ends`` admits, low <= high."""

    ends: Range
    says: str

    def admits(self, value) -> bool:
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            return False
        low, high = value
        return self.ends.admits(low) and self.ends.admits(high) and low <= high


# Valid values of every option by its name, which means the same in every augmentation taking it.
OPTION_RANGES = {
    "probability": Range(low=0, high=1, says="lie in [0, 1]"),
    "max_fraction": Range(low=0, high=1, high_open=True, says="lie in [0, 1)"),
    "fill": Range(whole=True, low=0, high=255, says="be a whole number in [0, 255]"),
    "max_degrees": Range(low=0, high=180, says="lie in [0, 180]"),
    "area_range": _Interval(
        Range(low=0, low_open=True, high=1), "be (low, high) with 0 < low <= high <= 1"
    ),
    "aspect_ratio_range": _Interval(
        Range(low=0, low_open=True), "be (low, high) with 0 < low <= high"
    ),
    "std": NOT_NEGATIVE,
    "length": POSITIVE_WHOLE,
    "brightness": NOT_NEGATIVE,
    "contrast": NOT_NEGATIVE,
    "saturation": NOT_NEGATIVE,
    "alpha": POSITIVE,
}


def _options_of(function: Callable[..., Any]) -> dict[str, Any]:
    """{option: default} of the keyword parameters of an augmentation's (train) function that
    augment_kwargs sets."""
    parameters = inspect.signature(function).parameters.values()
    return {
        p.name: p.default
        for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in DATASET_PARAMETERS
    }


def option_defaults() -> dict[str, dict[str, Any]]:
    """{augmentation: {option: default}} for every augmentation that has options: the
    ``dataset.augment_kwargs`` block of the config schema."""
    functions = {name: entry.train for name, entry in AUGMENTATIONS.items()}
    blocks = {name: _options_of(f) for name, f in {**functions, **MIXINGS}.items()}
    return {name: block for name, block in blocks.items() if block}


def parse_augment(spec: str, valid: tuple[str, ...] = AUGMENTATION_NAMES) -> tuple[str, ...]:
    """The names of a comma-separated ``augment`` value; a UsageError listing ``valid`` for a
    name not in it, and one for a mixing that is not last or not alone."""
    names = tuple(name.strip() for name in spec.split(",")) if isinstance(spec, str) else ()
    for name in names or (spec,):
        if name not in valid:
            raise UsageError(
                f"unknown augmentation {name!r} in augment {spec!r}; valid: {', '.join(valid)}"
                " (several: comma-separated, applied in order)"
            )
    mixing = [name for name in names if name in MIXINGS]
    if len(mixing) > 1:
        raise UsageError(
            f"augment {spec!r} names {len(mixing)} mixings ({', '.join(mixing)}); use one of them"
        )
    if mixing and names[-1] != mixing[0]:
        raise UsageError(
            f"augment {spec!r} puts {mixing[0]!r} before {names[-1]!r}; {mixing[0]} mixes"
            " the finished batch, so it comes last"
        )
    return names


def check_options(options: Mapping[str, Mapping[str, Any]]) -> None:
    """Raises a one-line UsageError for an augmentation without options, an option the
    augmentation does not take, or a value outside the option's range (``OPTION_RANGES``)."""
    blocks = option_defaults()
    for name, block in options.items():
        if name not in blocks:
            raise UsageError(
                f"augment_kwargs has no block {name!r}; augmentations with options:"
                f" {', '.join(blocks)}"
            )
        unknown = [option for option in block if option not in blocks[name]]
        if unknown:
            raise UsageError(
                f"unknown option(s) {', '.join(map(repr, unknown))} for augmentation {name!r};"
                f" valid options: {', '.join(blocks[name])}"
            )
        for option, value in block.items():
            valid = OPTION_RANGES[option]
            if not valid.admits(value):
                raise UsageError(f"augment_kwargs.{name}.{option}={value!r} must {valid.says}")


@dataclasses.dataclass(frozen=True)
class _Chain:
    """Functions applied in order; train steps (image, rng) share one generator."""

    steps: tuple[Callable[..., np.ndarray], ...]

    def __call__(self, image: np.ndarray, *rng: np.random.Generator) -> np.ndarray:
        for step in self.steps:
            image = step(image, *rng)
        return image


def _chain(steps: list[Callable[..., np.ndarray]], empty: Callable[..., np.ndarray]):
    # A single step is returned as it is: the recipes of one step cost what they did alone.
    if len(steps) <= 1:
        return steps[0] if steps else empty
    return _Chain(tuple(steps))


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """A train transform (image, rng) -> image and its deterministic eval transform, and the
    mixing of train batches, if any.

    output_size: the side of the square images both transforms return, or None when they
    return images at the size they receive.
    random: whether train draws from its generator. When it does not (no train step), the
    pipeline passes None instead of seeding a generator per example.
    """

    name: str
    train: Callable[[np.ndarray, np.random.Generator | None], np.ndarray]
    eval: Callable[[np.ndarray], np.ndarray]
    output_size: int | None
    random: bool
    # The mixing (images, rng) -> (images, partners, weights), options bound.
    mix: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None


def make_augmentation(
    spec: str,
    *,
    crop_padding: int,
    image_size: int,
    options: Mapping[str, Mapping[str, Any]] = MappingProxyType({}),
) -> Augmentation:
    """The composition of the comma-separated names in ``spec`` (AUGMENTATION_NAMES), recipes
    expanded and a mixing set apart, with the dataset's parameters and ``options``
    ({augmentation: {option: value}}, the rest at their defaults) bound. Names and options are
    checked first (UsageError)."""
    names = parse_augment(spec)
    check_options(options)
    dataset_values = {"crop_padding": crop_padding, "image_size": image_size}
    train_steps, eval_steps, output_size, mix = [], [], None, None
    for name in (step for name in names for step in RECIPES.get(name, (name,))):
        if name in MIXINGS:  # last, and alone: parse_augment said so
            mix = functools.partial(MIXINGS[name], **options.get(name, {}))
            continue
        entry = AUGMENTATIONS[name]
        parameters = inspect.signature(entry.train).parameters
        bound = {p: dataset_values[f] for p, f in DATASET_PARAMETERS.items() if p in parameters}
        train_steps.append(functools.partial(entry.train, **bound, **options.get(name, {})))
        if entry.resized_eval is not None:
            eval_steps.append(functools.partial(entry.resized_eval, size=image_size))
            output_size = image_size
    return Augmentation(
        ",".join(names),
        _chain(train_steps, identity_with_rng),
        _chain(eval_steps, identity),
        output_size,
        random=bool(train_steps),  # every train step draws
        mix=mix,
    )

"""Decoding encoded images and measuring per-channel statistics, with NumPy and PIL only.

Images are decoded here rather than by TFDS: TFDS's NumPy decoder keeps each file's own mode, so
a grayscale JPEG in a colour dataset (ImageNet has some) would come back with one channel.
"""
import io
from typing import Iterable

import numpy as np
from PIL import Image

_MODE_FOR_CHANNELS = {1: "L", 3: "RGB"}
# The formats datasets may store; naming them also spares PIL trying every plugin in turn.
IMAGE_FORMATS = ("JPEG", "PNG")


def decode_image(encoded: bytes, channels: int) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 (H, W, channels); other modes (gray, palette, alpha, CMYK) converted."""
    mode = _MODE_FOR_CHANNELS[channels]
    with Image.open(io.BytesIO(encoded), formats=IMAGE_FORMATS) as image:
        if image.mode != mode:
            image = image.convert(mode)
        pixels = np.asarray(image)
    return pixels.reshape(pixels.shape[0], pixels.shape[1], channels)


def channel_mean_std(images: Iterable[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of uint8 (H, W, C) images, in x/255 units.

    Every pixel counts once, so larger images weigh more; sums are float64 so millions of
    pixels lose no precision.
    """
    per_image = []
    for image in images:
        pixels = image.reshape(-1, image.shape[-1]).astype(np.float64)
        per_image.append(
            (np.full(pixels.shape[1], pixels.shape[0]), pixels.sum(axis=0), np.square(pixels).sum(axis=0))
        )
    if not per_image:
        raise ValueError("channel_mean_std needs at least one image")
    count, total, total_of_squares = np.sum(per_image, axis=0)
    mean = total / count
    std = np.sqrt(np.maximum(total_of_squares / count - np.square(mean), 0.0))
    return (mean / 255).tolist(), (std / 255).tolist()

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
# How a complete file of each format begins and ends: a JPEG with its end-of-image marker, a PNG
# with its IEND chunk (length, type and CRC).
_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"\x00\x00\x00\x00IEND\xaeB`\x82"


def decode_image(encoded: bytes, channels: int) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 (H, W, channels); other modes (gray, palette, alpha, CMYK)
    converted."""
    mode = _MODE_FOR_CHANNELS[channels]
    with Image.open(io.BytesIO(encoded), formats=IMAGE_FORMATS) as image:
        if image.mode != mode:
            image = image.convert(mode)
        pixels = np.asarray(image)
    return pixels.reshape(pixels.shape[0], pixels.shape[1], channels)


def ends_as_complete(encoded: bytes) -> bool:
    """Whether JPEG/PNG bytes end the way a whole file does (a cheap test, no decoding).

    A file cut short (a partial copy) fails it; so do valid files with trailing bytes after their
    end marker, so a False asks for a full decode, not a refusal.
    """
    if encoded.startswith(_JPEG_START):
        return encoded.rstrip(b"\x00").endswith(_JPEG_END)
    if encoded.startswith(_PNG_START):
        return encoded.endswith(_PNG_END)
    return False


def describe_decode_error(err: Exception) -> str:
    """'<type>: <first line of the message>', to put in a one-line error."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else 'no message'}"


def channel_mean_std(images: Iterable[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of uint8 (H, W, C) images, in x/255 units.

    Every pixel counts once, so larger images weigh more; sums are float64 so millions of
    pixels lose no precision.
    """
    per_image = []
    for image in images:
        pixels = image.reshape(-1, image.shape[-1]).astype(np.float64)
        per_image.append(
            (
                np.full(pixels.shape[1], pixels.shape[0]),
                pixels.sum(axis=0),
                np.square(pixels).sum(axis=0),
            )
        )
    if not per_image:
        raise ValueError("channel_mean_std needs at least one image")
    count, total, total_of_squares = np.sum(per_image, axis=0)
    mean = total / count
    std = np.sqrt(np.maximum(total_of_squares / count - np.square(mean), 0.0))
    return (mean / 255).tolist(), (std / 255).tolist()

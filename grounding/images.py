"""Turn whatever a user hands in into one RGB image the models can read, or a clear InvalidImageError.

Accepted: a PIL image, a numpy array ([H, W], [H, W, 1|3|4]; uint8, uint16, bool or float in [0, 1]),
a file path, raw bytes or a binary file object. Handled on the way:
- EXIF orientation applied (phone photos come out upright, boxes match what the user sees);
- grayscale, palette, CMYK -> RGB; RGBA / LA / transparent palette composited on white (not on the
  arbitrary colour hidden under transparent pixels);
- 16-bit and 32-bit integer images scaled to 8 bit by their bit depth (PIL's own convert clips them to white),
  float images by [0, 1];
- too large: more pixels than `ImageLimits.max_pixels` (PIL's own bomb limit, 2 x Image.MAX_IMAGE_PIXELS by
  default) is refused before decoding; a long side above `max_side` is downscaled, with a note;
- too small (a side under `min_side`) or a thin strip (aspect above `max_aspect`) is refused: the detector
  resizes the short side to 800 px and would see nothing but interpolation.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from grounding.errors import InvalidImageError


def _pil_bomb_limit() -> int:
    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 2 * 89_478_485


@dataclass(frozen=True)
class ImageLimits:
    max_side: int = 4096  # longer sides are downscaled to this (masks of N objects are N x H x W bool)
    max_pixels: int = field(default_factory=_pil_bomb_limit)  # refused above this (decompression bomb)
    min_side: int = 16
    max_aspect: float = 20.0


@dataclass(frozen=True)
class LoadedImage:
    """An image ready for the models, plus what was done to it."""

    pixels: np.ndarray  # [H, W, 3] uint8 RGB, C-contiguous
    original_size: tuple[int, int]  # (W, H) as handed in (after EXIF rotation)
    notes: tuple[str, ...] = ()

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of `pixels`."""
        return self.pixels.shape[1], self.pixels.shape[0]

    @property
    def scale(self) -> float:
        """`pixels` size / original size (1.0 unless downscaled)."""
        return self.pixels.shape[1] / self.original_size[0]

    def to_pil(self) -> Image.Image:
        return Image.fromarray(self.pixels, "RGB")


def load_image(image: Any, limits: ImageLimits = ImageLimits()) -> LoadedImage:
    """Any accepted image input -> `LoadedImage` (RGB uint8), else InvalidImageError saying why."""
    if image is None:
        raise InvalidImageError("No image given: upload an image (PNG, JPEG, WebP, ...) first.")
    if isinstance(image, LoadedImage):
        return image
    if isinstance(image, np.ndarray):
        return _fit(_array_to_rgb(image, limits), limits)
    if isinstance(image, Image.Image):
        return _fit(_pil_to_rgb(image, limits), limits)
    if isinstance(image, (str, os.PathLike, bytes, bytearray)) or hasattr(image, "read"):
        return _fit(_pil_to_rgb(_open(image, limits), limits), limits)
    raise InvalidImageError(
        f"Cannot read an image from a {type(image).__name__}; pass a file path, bytes, a PIL image or a numpy array."
    )


def _open(source: str | os.PathLike | bytes | bytearray | IO[bytes], limits: ImageLimits) -> Image.Image:
    name = "the uploaded data"
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        name = str(source)
        if not Path(source).is_file():
            raise InvalidImageError(f"Image file not found: {name}")
    try:
        opened = Image.open(source)
        _check_pixels(opened.size, limits)
        opened.load()  # decode now so truncated files fail here, not inside a model
    except InvalidImageError:
        raise
    except Image.DecompressionBombError as err:
        raise InvalidImageError(f"{name} is too large to decode safely ({err}).") from err
    except UnidentifiedImageError as err:
        raise InvalidImageError(f"{name} is not an image file PIL can read (corrupt or unsupported format).") from err
    except (OSError, SyntaxError, ValueError) as err:  # truncated data, bad chunks, broken headers
        raise InvalidImageError(f"{name} is damaged or truncated and cannot be decoded: {err}") from err
    return opened


def _check_pixels(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width * height > limits.max_pixels:
        raise InvalidImageError(
            f"The image is {width}x{height} = {width * height / 1e6:.0f} megapixels, above the limit of "
            f"{limits.max_pixels / 1e6:.0f} MP (refused as a possible decompression bomb). Downscale it first."
        )


def _pil_to_rgb(image: Image.Image, limits: ImageLimits) -> tuple[np.ndarray, tuple[str, ...]]:
    _check_pixels(image.size, limits)
    notes: list[str] = []
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not lose the image itself
        upright = image
        notes.append("EXIF orientation could not be read and was ignored")
    if upright is not image:
        orientation = image.getexif().get(0x0112)
        if orientation not in (None, 1):
            notes.append(f"rotated upright from EXIF orientation {orientation}")
    image = upright
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image)
        if mode == "I":  # 32-bit container; PNG 16-bit grayscale opens as "I" with values up to 65535
            array = array.astype(np.uint16) if array.max(initial=0) <= 65535 else array
        return _array_to_rgb(array, limits, notes)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB")), tuple(notes)
    if mode == "CMYK":
        notes.append("converted from CMYK")
    return np.asarray(image.convert("RGB")), tuple(notes)


def _array_to_rgb(
    array: np.ndarray, limits: ImageLimits, notes: list[str] | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    notes = list(notes or [])
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or array.size == 0:
        raise InvalidImageError(f"An image array must be [H, W], [H, W, 3] or [H, W, 4]; got shape {array.shape}.")
    _check_pixels((array.shape[1], array.shape[0]), limits)
    array = _to_uint8(array, notes)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 4:  # composite RGBA on white
        alpha = array[:, :, 3:4].astype(np.float32) / 255.0
        array = (array[:, :, :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(array), tuple(notes)


def _to_uint8(array: np.ndarray, notes: list[str]) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InvalidImageError("The image array contains NaN or infinite values.")
        if array.min() < 0 or array.max() > 1:
            if array.min() >= 0 and array.max() <= 255:
                return (array + 0.5).astype(np.uint8)
            raise InvalidImageError("A float image must hold values in [0, 1] (or [0, 255]).")
        return (array * 255.0 + 0.5).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0:
            raise InvalidImageError("An integer image must not hold negative values.")
        bits = 16 if array.max() <= 65535 else 32
        if array.max() <= 255 and array.dtype.itemsize == 1:
            return array.astype(np.uint8)
        notes.append(f"scaled from {bits}-bit to 8-bit")
        return (array.astype(np.float64) / (2**bits - 1) * 255.0 + 0.5).astype(np.uint8)
    raise InvalidImageError(f"Unsupported image dtype {array.dtype}.")


def _fit(converted: tuple[np.ndarray, tuple[str, ...]], limits: ImageLimits) -> LoadedImage:
    pixels, notes = converted
    height, width = pixels.shape[:2]
    if min(width, height) < limits.min_side:
        raise InvalidImageError(
            f"The image is {width}x{height} pixels; each side must be at least {limits.min_side} px to find anything."
        )
    if max(width, height) / min(width, height) > limits.max_aspect:
        raise InvalidImageError(
            f"The image is {width}x{height} pixels, a strip thinner than 1:{limits.max_aspect:g}; crop it to a "
            f"less extreme aspect ratio."
        )
    original = (width, height)
    if max(width, height) > limits.max_side:
        scale = limits.max_side / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        # BOX = area average: alias-free for downscaling and ~1 s on 100 MP where LANCZOS takes ~4 s.
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BOX))
        notes = notes + (
            f"downscaled from {width}x{height} to {size[0]}x{size[1]} (long side limit {limits.max_side} px); "
            f"boxes and masks refer to the downscaled image",
        )
    return LoadedImage(np.ascontiguousarray(pixels), original, tuple(notes))

"""Turn whatever a user hands in into one RGB image the models can read, or a clear InvalidImageError.

Accepted: a PIL image, a numpy array ([H, W], [H, W, 1|3|4]; uint8, uint16, bool or float in [0, 1]),
a file path, raw bytes or a binary file object. Handled on the way:
- EXIF orientation applied (phone photos come out upright, boxes match what the user sees);
- grayscale, palette, CMYK -> RGB; RGBA / LA / transparent palette composited on white (not on the
  arbitrary colour hidden under transparent pixels);
- 16-bit and 32-bit integer images scaled to 8 bit by their bit depth (PIL's own convert clips them to white),
  float images by [0, 1];
- too large: decided from the file's header, before any pixel is decoded. More pixels than
  `ImageLimits.max_pixels` is refused (decompression bomb); a decode that would need more memory than
  `ImageLimits.max_decode_bytes` (the image, the decoder's own buffers, the conversions) is refused, except a
  JPEG, which is decoded at 1/2, 1/4 or 1/8 scale (DCT draft mode) when that fits; a long side above
  `max_side` is downscaled in the image's own mode before any conversion, with a note;
- too small (a side under `min_side`) or a thin strip (aspect above `max_aspect`) is refused, also from the
  header: the detector resizes the short side to 800 px and would see nothing but interpolation.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from grounding.errors import InvalidImageError

# Bytes per pixel of PIL's in-memory image by mode (PIL stores 3- and 2-band modes in 4 bytes).
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# Bytes per output pixel of the conversions after the downscale (RGB image, arrays, compositing copies).
_OUTPUT_BYTES_PER_PIXEL = 16
# PIL decoders that produce rows as they read (PNG, uncompressed rasters, GIF, baseline JPEG); others (WebP,
# libtiff strips, RLE, progressive JPEG) hold whole-image buffers of their own while they decode.
_STREAMING_CODECS = {"zip", "raw", "gif", "jpeg"}
# EXIF orientation -> the transpose that shows the image upright.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _pil_bomb_limit() -> int:
    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 2 * 89_478_485


@dataclass(frozen=True)
class ImageLimits:
    max_side: int = 4096  # longer sides are downscaled to this (masks of N objects are N x H x W bool)
    max_pixels: int = field(default_factory=_pil_bomb_limit)  # refused above this (decompression bomb)
    max_decode_bytes: int = 1 << 30  # memory one image may take while it is decoded and converted
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
        return _array_to_loaded(image, limits)
    if isinstance(image, Image.Image):
        return _pil_to_loaded(image, limits)
    if isinstance(image, (str, os.PathLike, bytes, bytearray)) or hasattr(image, "read"):
        opened, stored_size = _open(image, limits)
        return _pil_to_loaded(opened, limits, stored_size)
    raise InvalidImageError(
        f"Cannot read an image from a {type(image).__name__}; pass a file path, bytes, a PIL image or a numpy array."
    )


def fitted_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(W, H) after the downscale that brings the long side to `max_side` (unchanged if it is within)."""
    width, height = size
    if max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode_bytes(size: tuple[int, int], mode: str, max_side: int) -> int:
    """Memory the load of a `size` image of PIL `mode` takes at its peak: the decoded image, the first pass of
    the downscale (and the RGBA copy a palette image needs before it), and the converted output."""
    width, height = size
    out_width, out_height = fitted_size(size, max_side)
    pixel = _PIXEL_BYTES.get(mode, 4)
    total = width * height * pixel + out_width * out_height * _OUTPUT_BYTES_PER_PIXEL
    if (out_width, out_height) != (width, height):
        if mode in ("P", "1"):
            total += width * height * 4  # converted before it is resized (resizing indices would alias)
        total += out_width * height * max(pixel, 4)  # BOX resizes horizontally first
    return total


def _open(
    source: str | os.PathLike | bytes | bytearray | IO[bytes], limits: ImageLimits
) -> tuple[Image.Image, tuple[int, int]]:
    """(decoded image, (W, H) the file stores); the image is smaller than that where a JPEG was drafted."""
    name = "The uploaded data"
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        name = str(source)
        if not Path(source).is_file():
            raise InvalidImageError(f"Image file not found: {name}")
    try:
        opened = Image.open(source)  # reads the header only
        stored_size = opened.size
        _plan_decode(opened, limits)
        opened.load()  # decode now so truncated files fail here, not inside a model
    except InvalidImageError:
        raise
    except Image.DecompressionBombError as err:
        raise InvalidImageError(f"{name} is too large to decode safely ({err}).") from err
    except UnidentifiedImageError as err:
        raise InvalidImageError(f"{name} is not an image file PIL can read (corrupt or unsupported format).") from err
    except (OSError, SyntaxError, ValueError) as err:  # truncated data, bad chunks, broken headers
        raise InvalidImageError(f"{name} is damaged or truncated and cannot be decoded: {err}") from err
    return opened, stored_size


def decoder_overhead(opened: Image.Image) -> int:
    """Bytes a decoder holds beyond the decoded image, judged from the header: 0 for streaming decoders, the
    coefficients of the whole image for a progressive JPEG (at any draft scale), three RGBA copies for the others
    (measured: lossless WebP peaks at ~3.6x its RGBA size, a deflate TIFF strip at ~1.7x)."""
    width, height = opened.size
    codec = opened.tile[0][0] if opened.tile else None
    if codec == "jpeg" and (opened.info.get("progressive") or opened.info.get("progression")):
        return 2 * width * height * len(opened.getbands())
    if codec in _STREAMING_CODECS:
        return 0
    return 3 * width * height * 4


def _plan_decode(opened: Image.Image, limits: ImageLimits) -> None:
    """Refuse from the header what would be too costly to decode; set a JPEG to decode at a reduced scale."""
    _check_shape(opened.size, limits)
    width, height = opened.size
    size = opened.size
    overhead = decoder_overhead(opened)
    if opened.format == "JPEG":
        divisor = _jpeg_divisor(opened.size, opened.mode, limits, overhead)
        if divisor > 1:
            opened.draft(opened.mode, (width // divisor, height // divisor))  # a draft only takes effect once
            size = (-(-width // divisor), -(-height // divisor))  # libjpeg rounds scaled sizes up
    needed = decode_bytes(size, opened.mode, limits.max_side) + overhead
    if needed > limits.max_decode_bytes:
        raise InvalidImageError(
            f"The image is {width}x{height} pixels ({opened.mode}); decoding it would take about "
            f"{needed / 2**20:.0f} MB, more than the {limits.max_decode_bytes / 2**20:.0f} MB this server allows "
            f"per image. Downscale it (or save it as JPEG) and try again."
        )


def _jpeg_divisor(size: tuple[int, int], mode: str, limits: ImageLimits, overhead: int) -> int:
    """DCT scale divisor (1, 2, 4 or 8) to decode a JPEG at: the largest whose long side still reaches
    `max_side` (the image is downscaled to that anyway), or a larger one where that is what fits the budget."""
    width, height = size
    scaled = {d: (-(-width // d), -(-height // d)) for d in (1, 2, 4, 8)}
    long_side = min(max(size), limits.max_side)
    sharpest = max(d for d, (w, h) in scaled.items() if max(w, h) >= long_side)
    budget = limits.max_decode_bytes - overhead
    fitting = [d for d in scaled if d >= sharpest and decode_bytes(scaled[d], mode, limits.max_side) <= budget]
    return fitting[0] if fitting else 8


def _check_shape(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width * height > limits.max_pixels:
        raise InvalidImageError(
            f"The image is {width}x{height} = {width * height / 1e6:.0f} megapixels, above the limit of "
            f"{limits.max_pixels / 1e6:.0f} MP (refused as a possible decompression bomb). Downscale it first."
        )
    if min(width, height) < limits.min_side:
        raise InvalidImageError(
            f"The image is {width}x{height} pixels; each side must be at least {limits.min_side} px to find anything."
        )
    if max(width, height) / min(width, height) > limits.max_aspect:
        raise InvalidImageError(
            f"The image is {width}x{height} pixels, a strip thinner than 1:{limits.max_aspect:g}; crop it to a "
            f"less extreme aspect ratio."
        )


def _pil_to_loaded(
    image: Image.Image, limits: ImageLimits, stored_size: tuple[int, int] | None = None
) -> LoadedImage:
    """`stored_size`: (W, H) of the file when `image` was decoded at a reduced scale."""
    _check_shape(image.size, limits)
    notes: list[str] = []
    try:
        orientation = image.getexif().get(0x0112)
    except Exception:  # a broken EXIF block must not lose the image itself
        orientation = None
        notes.append("EXIF orientation could not be read and was ignored")
    transpose = _UPRIGHT.get(orientation)
    stored = stored_size or image.size
    original = (stored[1], stored[0]) if orientation in (5, 6, 7, 8) else stored
    target = fitted_size(stored, limits.max_side)
    # Downscale first, in the image's own mode: every conversion below then touches the small image only.
    # (A JPEG drafted below the target for the memory budget is kept at its drafted size.)
    if max(image.size) > max(target):
        if image.mode in ("P", "1"):
            image = image.convert("RGBA" if image.mode == "P" else "L")
        # BOX = area average: alias-free for downscaling and ~1 s on 100 MP where LANCZOS takes ~4 s.
        image = image.resize(target, Image.Resampling.BOX)
    if transpose is not None:
        image = image.transpose(transpose)
        notes.append(f"rotated upright from EXIF orientation {orientation}")
    pixels = _pil_to_rgb(image, notes)
    return _loaded(pixels, original, limits, notes)


def _pil_to_rgb(image: Image.Image, notes: list[str]) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image)
        if mode == "I":  # 32-bit container; PNG 16-bit grayscale opens as "I" with values up to 65535
            array = array.astype(np.uint16) if array.max(initial=0) <= 65535 else array
        return _array_to_rgb(array, notes)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode == "CMYK":
        notes.append("converted from CMYK")
    return np.asarray(image.convert("RGB"))


def _array_to_loaded(array: np.ndarray, limits: ImageLimits) -> LoadedImage:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or array.size == 0:
        raise InvalidImageError(f"An image array must be [H, W], [H, W, 3] or [H, W, 4]; got shape {array.shape}.")
    size = (array.shape[1], array.shape[0])
    _check_shape(size, limits)
    notes: list[str] = []
    pixels = _array_to_rgb(array, notes)
    if max(size) > limits.max_side:
        pixels = np.asarray(Image.fromarray(pixels).resize(fitted_size(size, limits.max_side), Image.Resampling.BOX))
    return _loaded(pixels, size, limits, notes)


def _array_to_rgb(array: np.ndarray, notes: list[str]) -> np.ndarray:
    array = _to_uint8(array, notes)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 4:  # composite RGBA on white
        alpha = array[:, :, 3:4].astype(np.float32) / 255.0
        array = (array[:, :, :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(array)


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


def _loaded(
    pixels: np.ndarray, original: tuple[int, int], limits: ImageLimits, notes: list[str] | None = None
) -> LoadedImage:
    """`LoadedImage` of the converted (and possibly downscaled) `pixels`, noting a downscale from `original`."""
    notes = list(notes or [])
    height, width = pixels.shape[:2]
    if (width, height) != original:
        notes.append(
            f"downscaled from {original[0]}x{original[1]} to {width}x{height} (long side limit {limits.max_side} px); "
            f"boxes and masks refer to the downscaled image"
        )
    return LoadedImage(np.ascontiguousarray(pixels), original, tuple(notes))

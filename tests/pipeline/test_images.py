"""Input checks: every bad image becomes an InvalidImageError; odd formats come out as correct RGB."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from grounding.errors import InvalidImageError
from grounding.images import ImageLimits, load_image


def _png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kwargs.pop("format", "PNG"), **kwargs)
    return buffer.getvalue()


def test_none_corrupt_and_truncated_are_refused(tmp_path):
    with pytest.raises(InvalidImageError, match="No image"):
        load_image(None)
    with pytest.raises(InvalidImageError, match="not an image"):
        load_image(b"this is not an image at all")
    jpeg = _png_bytes(Image.new("RGB", (200, 100), (200, 10, 10)), format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(jpeg[: len(jpeg) // 2])
    with pytest.raises(InvalidImageError, match="truncated"):
        load_image(path)
    with pytest.raises(InvalidImageError, match="not found"):
        load_image(tmp_path / "missing.png")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height (grayscale) with one tiny compressed block: a bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _png_header_only(30000, 30000)  # decoding would need 900 MB
    with pytest.raises(InvalidImageError, match="too large|decompression bomb"):
        load_image(bomb)
    with pytest.raises(InvalidImageError, match="decompression bomb"):
        load_image(_png_bytes(Image.new("L", (300, 300))), ImageLimits(max_pixels=50_000))


def test_tiny_and_strip_images_are_refused():
    with pytest.raises(InvalidImageError, match="at least 16 px"):
        load_image(np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(InvalidImageError, match="aspect"):
        load_image(np.zeros((20, 2000, 3), np.uint8))


def test_huge_image_is_downscaled_with_a_note():
    huge = np.zeros((9000, 12000, 3), np.uint8)
    huge[:, 6000:] = 255
    loaded = load_image(huge)
    assert loaded.size == (4096, 3072)
    assert loaded.original_size == (12000, 9000)
    assert loaded.scale == pytest.approx(4096 / 12000)
    assert any("downscaled from 12000x9000 to 4096x3072" in n for n in loaded.notes)
    assert loaded.pixels[100, 100].tolist() == [0, 0, 0] and loaded.pixels[100, 4000].tolist() == [255, 255, 255]


def test_grayscale_rgba_cmyk_palette():
    gray = load_image(Image.new("L", (40, 30), 77))
    assert gray.pixels.shape == (30, 40, 3) and gray.pixels.dtype == np.uint8 and (gray.pixels == 77).all()

    rgba = Image.new("RGBA", (40, 30), (0, 0, 0, 0))  # fully transparent black -> white background
    rgba.paste((255, 0, 0, 255), (0, 0, 20, 30))
    out = load_image(rgba).pixels
    assert out[5, 5].tolist() == [255, 0, 0] and out[5, 30].tolist() == [255, 255, 255]

    cmyk = load_image(_png_bytes(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), format="JPEG", quality=100))
    red = cmyk.pixels[15, 20]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60 and "converted from CMYK" in cmyk.notes

    palette = Image.new("P", (40, 30), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    assert load_image(palette).pixels[0, 0].tolist() == [0, 255, 0]


def test_16_bit_is_scaled_not_clipped():
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # up to 65520
    png16 = _png_bytes(Image.fromarray(ramp))
    loaded = load_image(png16)
    expected = np.round(ramp.astype(np.float64) / 65535 * 255).astype(np.uint8)
    assert np.abs(loaded.pixels[:, :, 0].astype(int) - expected).max() <= 1
    assert loaded.pixels.min() == 0 and loaded.pixels.max() >= 250  # PIL's convert("RGB") would be all 255
    assert load_image(np.full((20, 20, 3), 65535, np.uint16)).pixels.min() == 255
    assert load_image(np.full((20, 20), 0.5, np.float32)).pixels.max() == 128


def test_exif_rotation_is_applied():
    picture = Image.new("RGB", (60, 20), (0, 0, 255))
    picture.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the left, stored landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    loaded = load_image(_png_bytes(picture, format="JPEG", exif=exif.tobytes(), quality=100))
    assert loaded.size == (20, 60)  # upright portrait
    assert loaded.pixels[2, 10, 0] > 200 and loaded.pixels[58, 10, 2] > 200  # red ends up on top
    assert any("EXIF orientation 6" in n for n in loaded.notes)

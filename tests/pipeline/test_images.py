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


def _png_header_only(width: int, height: int, colour_type: int = 0) -> bytes:
    """A PNG that claims width x height (grayscale; colour type 6 = RGBA) with one tiny compressed block: a
    bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
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


def test_memory_budget_is_decided_from_the_header():
    limits = ImageLimits(max_side=2048, max_decode_bytes=64 << 20)
    # 5000x5000 RGBA would decode to 100 MB: refused without decoding (the body below is a few bytes).
    with pytest.raises(InvalidImageError, match=r"5000x5000 pixels \(RGBA\).*more than the 64 MB"):
        load_image(_png_header_only(5000, 5000, colour_type=6), limits)
    # The same size in 8-bit grey fits (25 MB) and comes out downscaled in its own mode.
    grey = load_image(_png_bytes(Image.new("L", (5000, 2500), 90)), limits)
    assert grey.size == (2048, 1024) and grey.original_size == (5000, 2500) and (grey.pixels == 90).all()
    with pytest.raises(InvalidImageError, match="at least 16 px"):  # a strip is refused before it is decoded
        load_image(_png_header_only(20000, 1), limits)


def test_large_jpeg_is_decoded_at_a_reduced_scale():
    picture = Image.new("RGB", (8000, 6000), (0, 0, 255))
    picture.paste((255, 0, 0), (0, 0, 4000, 6000))
    jpeg = _png_bytes(picture, format="JPEG", quality=90)
    # Full size needs ~280 MB: over a 128 MB budget, yet the 1/2 DCT scale (4000x3000) fits and still
    # reaches the 2048 px long side, so the result is as sharp as a full decode would give.
    loaded = load_image(jpeg, ImageLimits(max_side=2048, max_decode_bytes=128 << 20))
    assert loaded.size == (2048, 1536) and loaded.original_size == (8000, 6000)
    assert "downscaled from 8000x6000 to 2048x1536" in loaded.notes[-1]
    assert loaded.pixels[700, 500, 0] > 240 and loaded.pixels[700, 1500, 2] > 240
    # A budget only the 1/8 scale fits: decoded at 1000x750, boxes then refer to that image.
    small = load_image(jpeg, ImageLimits(max_side=2048, max_decode_bytes=20 << 20))
    assert small.size == (1000, 750) and small.original_size == (8000, 6000)
    with pytest.raises(InvalidImageError, match="more than the 1 MB"):
        load_image(jpeg, ImageLimits(max_side=2048, max_decode_bytes=1 << 20))


def test_large_palette_and_exif_rotated_images_are_downscaled_upright():
    palette = Image.new("P", (3000, 1000), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    loaded = load_image(_png_bytes(palette), ImageLimits(max_side=1500))
    assert loaded.size == (1500, 500) and (loaded.pixels == [0, 255, 0]).all()
    picture = Image.new("RGB", (3000, 1000), (0, 0, 255))
    picture.paste((255, 0, 0), (0, 0, 500, 1000))  # red on the left, stored landscape
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = load_image(_png_bytes(picture, format="JPEG", exif=exif.tobytes(), quality=95), ImageLimits(max_side=1500))
    assert rotated.size == (500, 1500) and rotated.original_size == (1000, 3000)
    assert rotated.pixels[50, 250, 0] > 200 and rotated.pixels[1400, 250, 2] > 200  # red on top

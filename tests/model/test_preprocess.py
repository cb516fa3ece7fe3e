"""preprocess_image / pad_batch equal transformers' GroundingDinoImageProcessor (resize 800/1333 + normalise + pad)."""
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import GroundingDinoImageProcessor

from grounding.model.preprocess import pad_batch, preprocess_image, resized_size


def random_image(height: int, width: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


@pytest.fixture(scope="module")
def processor():
    return GroundingDinoImageProcessor()  # defaults = the hub config of grounding-dino-tiny/-base


@pytest.mark.parametrize(
    "height,width",
    [(480, 640), (640, 480), (97, 131), (800, 1200), (1000, 3000), (2000, 151), (300, 300), (801, 600)],
)
def test_preprocess_equals_transformers(processor, height, width):
    image = random_image(height, width, seed=height + width)
    expected = processor(images=image, return_tensors="pt")
    pixel_values, pixel_mask = preprocess_image(image)
    assert pixel_values.shape == expected["pixel_values"].shape
    assert pixel_values.dtype == torch.float32
    assert torch.equal(pixel_values, expected["pixel_values"])  # exact, not only <= 1e-4
    assert pixel_mask.dtype == torch.bool and pixel_mask.all()
    assert torch.equal(pixel_mask, expected["pixel_mask"].bool())


def test_sizes_short_800_long_at_most_1333():
    assert resized_size(480, 640) == (800, 1066)
    assert resized_size(800, 1200) == (800, 1200)  # already there: no resize
    assert resized_size(1000, 3000) == (444, 1333)  # long side caps
    assert resized_size(3000, 1000) == (1333, 444)
    assert resized_size(97, 131) == (800, 1080)  # upscales small images


def test_non_rgb_modes_are_converted(processor):
    for mode in ("L", "RGBA", "P"):
        image = random_image(120, 90, mode=mode, seed=1)
        pixel_values, _ = preprocess_image(image)
        expected = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        assert torch.equal(pixel_values, expected)


def test_pad_batch_equals_transformers_padding(processor):
    images = [random_image(480, 640, seed=2), random_image(640, 480, seed=3)]
    expected = processor(images=images, return_tensors="pt")
    pixel_values, pixel_mask = pad_batch([preprocess_image(i) for i in images])
    assert pixel_values.shape == expected["pixel_values"].shape == (2, 3, 1066, 1066)
    assert torch.equal(pixel_values, expected["pixel_values"])
    assert torch.equal(pixel_mask, expected["pixel_mask"].bool())
    assert pixel_mask[0, :800, :1066].all() and not pixel_mask[0, 800:].any()

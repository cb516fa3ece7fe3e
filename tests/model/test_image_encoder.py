"""Image side (Swin + input_proj + extra level + masks + sine positions) against transformers' GroundingDinoModel
components with the same random weights."""
from dataclasses import replace

import pytest
import torch
from transformers import GroundingDinoForObjectDetection

from grounding.config import swint_ogc, tiny
from grounding.keymap import hf_config, hf_module_to_file_key, official_to_hf
from grounding.model.image_encoder import ImageFeatures, build_backbone, build_input_proj, encode_image_features
from grounding.model.position_encoding import sine_position_embedding
from tests.fixtures.dino import randomize_parameters

TOLERANCE = 1e-4


class ImageSide(torch.nn.Module):
    """Our image modules under their GroundingDINO attribute names (so official_to_hf maps them)."""

    def __init__(self, config):
        super().__init__()
        self.backbone = build_backbone(config)
        self.input_proj = build_input_proj(config)


def hf_image_side(ours: ImageSide, config):
    """transformers' GroundingDinoModel with our image weights copied in (its text/transformer parts are
    random and unused here)."""
    model = GroundingDinoForObjectDetection(hf_config(config)).eval()
    parameters = {hf_module_to_file_key(name): p for name, p in model.named_parameters()}
    with torch.no_grad():
        for key, tensor in official_to_hf(ours.state_dict()).items():
            parameters[key].copy_(tensor)
    return model.model


def hf_image_features(model, pixel_values, pixel_mask):
    """The image half of transformers' GroundingDinoModel.forward -> (features, masks True=valid, pos)."""
    vision, pos = model.backbone(pixel_values, pixel_mask.long())
    features = [model.input_proj_vision[level](source) for level, (source, _) in enumerate(vision)]
    masks = [mask for _, mask in vision]
    extra = model.input_proj_vision[len(features)](vision[-1][0])
    extra_mask = torch.nn.functional.interpolate(pixel_mask[None].float(), size=extra.shape[-2:]).to(torch.bool)[0]
    features.append(extra)
    masks.append(extra_mask)
    pos = [*pos, model.backbone.position_embedding(extra, extra_mask)]
    return features, masks, pos


def compare(ours: ImageFeatures, theirs) -> float:
    features, masks, pos = theirs
    worst = 0.0
    for level in range(4):
        assert ours.features[level].shape == features[level].shape
        assert torch.equal(ours.masks[level], ~masks[level])
        worst = max(worst, (ours.features[level] - features[level]).abs().max().item(),
                    (ours.pos[level] - pos[level]).abs().max().item())
    return worst


@pytest.fixture(scope="module")
def tiny_pair():
    config = tiny()
    torch.manual_seed(0)
    ours = randomize_parameters(ImageSide(config), seed=0).eval()
    return config, ours, hf_image_side(ours, config)


@pytest.mark.parametrize("height,width", [(97, 131), (203, 157), (320, 480), (72, 100), (33, 250)])
def test_tiny_image_side_matches_transformers(tiny_pair, height, width):
    config, ours, theirs = tiny_pair
    pixels = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height * width))
    mask = torch.ones(1, height, width, dtype=torch.bool)
    with torch.inference_mode():
        got = encode_image_features(ours.backbone, ours.input_proj, pixels, mask, config)
        diff = compare(got, hf_image_features(theirs, pixels, mask))
    print(f"tiny image side {height}x{width}: max abs diff {diff:.2e}")
    assert diff <= TOLERANCE


def test_padded_batch_masks_and_positions(tiny_pair):
    """Batch of two with the second image padded: masks per level and sine positions over the valid part."""
    config, ours, theirs = tiny_pair
    pixels = torch.randn(2, 3, 211, 299, generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 211, 299, dtype=torch.bool)
    mask[1, 150:, :] = False
    mask[1, :, 200:] = False
    pixels[1, :, ~mask[1]] = 0.0
    with torch.inference_mode():
        got = encode_image_features(ours.backbone, ours.input_proj, pixels, mask, config)
        diff = compare(got, hf_image_features(theirs, pixels, mask))
    assert diff <= TOLERANCE
    assert got.masks[0][1].any() and not got.masks[0][0].any()
    # pos_y (first half of the channels) runs up to 2*pi over the VALID rows of the padded image only
    half = config.d_model // 2
    valid_rows = int((~got.masks[0][1][:, 0]).sum())
    unpadded = sine_position_embedding(torch.zeros(1, valid_rows, 1, dtype=torch.bool), half, 20.0)
    assert torch.allclose(got.pos[0][1, :half, :valid_rows, 0], unpadded[0, :half, :, 0], atol=1e-6)


def test_image_features_container(tiny_pair):
    config, ours, _ = tiny_pair
    with torch.inference_mode():
        got = encode_image_features(ours.backbone, ours.input_proj, torch.randn(1, 3, 128, 96),
                                    torch.ones(1, 128, 96, dtype=torch.bool), config)
    assert got.spatial_shapes == [(16, 12), (8, 6), (4, 3), (2, 2)]
    assert got.nbytes == sum(t.numel() * t.element_size() for t in [*got.features, *got.masks, *got.pos])
    moved = got.to("cpu")
    assert all(torch.equal(a, b) for a, b in zip(moved.features, got.features))


def test_official_key_names():
    keys = set(ImageSide(swint_ogc()).state_dict())
    assert "backbone.0.patch_embed.proj.weight" in keys
    assert "backbone.0.layers.2.blocks.5.attn.qkv.weight" in keys
    assert "backbone.0.layers.2.blocks.5.attn.relative_position_bias_table" in keys
    assert {f"backbone.0.layers.{s}.downsample.reduction.weight" for s in range(3)} <= keys
    assert "backbone.0.layers.3.downsample.reduction.weight" not in keys  # last stage: no merging
    assert {f"backbone.0.norm{i}.weight" for i in (1, 2, 3)} <= keys and "backbone.0.norm0.weight" not in keys
    assert {f"input_proj.{i}.{j}.weight" for i in range(4) for j in (0, 1)} <= keys
    assert ImageSide(swint_ogc()).input_proj[3][0].stride == (2, 2)
    assert not any("relative_position_index" in k for k in keys)  # recomputed, not stored


def test_swin_t_image_side_800x1200_matches_transformers():
    """Full Swin-T (window 7) image side at a realistic size (every stage needs window padding). The text and
    transformer sizes stay tiny: they do not touch the image side and keep transformers' model quick to build."""
    config = replace(tiny(), swin=swint_ogc().swin, d_model=256)
    torch.manual_seed(0)
    ours = randomize_parameters(ImageSide(config), seed=0).eval()
    theirs = hf_image_side(ours, config)
    pixels = torch.randn(1, 3, 800, 1200, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(1, 800, 1200, dtype=torch.bool)
    with torch.inference_mode():
        got = encode_image_features(ours.backbone, ours.input_proj, pixels, mask, config)
        diff = compare(got, hf_image_features(theirs, pixels, mask))
    print(f"Swin-T image side 800x1200: max abs diff {diff:.2e}")
    assert diff <= TOLERANCE

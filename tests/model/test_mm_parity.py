"""MM-Grounding-DINO / LLMDet: our GroundingDINO (mmdet's head: `contrastive_bias`, per-layer heads) vs
transformers' MMGroundingDinoForObjectDetection with the same random weights, fp32, max abs diff <= 1e-4.

The direction is the one users take: transformers' model is built and randomised (every parameter), written
with its own `save_pretrained`, and read by our public loader (strict: no missing or unexpected keys). The
comparison harness (selection-score check, then transformers' top-k ranking replayed) is test_parity's.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from grounding.checkpoint import KNOWN_WEIGHTS, load_model, read_checkpoint, resolve_checkpoint
from grounding.config import SwinConfig, mm_grounding_dino, tiny
from grounding.detector import GroundingDetector
from grounding.errors import WeightsUnavailableError
from grounding.keymap import as_transformers_port, hf_config
from grounding.model.preprocess import pad_batch, preprocess_image
from tests.fixtures.dino import randomize_parameters
from tests.model.test_parity import CAT_REMOTE, DOG, assert_close, compare, scene, single_caption


def mm_tiny(share: bool = False) -> dataclasses.dataclass:
    return dataclasses.replace(tiny(), contrastive_bias=True, share_box_head=share, share_class_head=share)


def mm_large_shaped() -> dataclasses.dataclass:
    """The Large models' shape, narrow: Swin stages 1-4 feed the detector, plus one extra level (5 in all)."""
    return dataclasses.replace(
        mm_tiny(), swin=SwinConfig(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), window_size=6,
                                   out_indices=(0, 1, 2, 3)),
        num_feature_levels=5,
    )


def transformers_pair(config, directory: Path, seed: int = 0):
    """(ours, transformers'): transformers' model randomised and saved with save_pretrained, ours loaded from that
    folder by our loader with the transformers-port inverse sigmoid."""
    from transformers import MMGroundingDinoForObjectDetection

    torch.manual_seed(seed)
    hf_model = randomize_parameters(MMGroundingDinoForObjectDetection(hf_config(config)), seed).eval()
    hf_model.save_pretrained(directory)
    read = read_checkpoint(directory)
    assert read.config.contrastive_bias and read.config.share_box_head == config.share_box_head
    model, report = load_model(directory, config=as_transformers_port(read.config))
    assert report.ok and report.loaded > 0
    return model, hf_model


@pytest.fixture(scope="module", params=[False, True], ids=["per_layer_heads", "shared_heads"])
def tiny_pair(request, tmp_path_factory):
    return transformers_pair(mm_tiny(share=request.param), tmp_path_factory.mktemp("mm_tiny"))


@pytest.mark.parametrize("height,width", [(97, 131), (203, 157)])
def test_tiny_config(tiny_pair, height, width, monkeypatch):
    model, hf_model = tiny_pair
    pixels = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height + width))
    mask = torch.ones(1, height, width, dtype=torch.bool)
    assert_close(compare(model, hf_model, *single_caption(CAT_REMOTE), pixels, mask, monkeypatch))


def test_tiny_batch_of_two_different_captions(tiny_pair, monkeypatch):
    model, hf_model = tiny_pair
    pixels, mask = pad_batch([preprocess_image(scene(180, 150, seed=1), 150, 250),
                              preprocess_image(scene(140, 210, seed=2), 150, 250)])
    input_ids = torch.tensor([CAT_REMOTE, DOG + [0] * (len(CAT_REMOTE) - len(DOG))])
    assert_close(compare(model, hf_model, input_ids, (input_ids != 0).long(), pixels, mask, monkeypatch))


def test_large_shaped_five_levels(tmp_path, monkeypatch):
    model, hf_model = transformers_pair(mm_large_shaped(), tmp_path / "large_shaped", seed=1)
    assert len(model.input_proj) == 5 and model.config.swin.out_indices == (0, 1, 2, 3)
    pixels, mask = preprocess_image(scene(300, 220, seed=3), 220, 300)
    assert_close(compare(model, hf_model, *single_caption(CAT_REMOTE), pixels, mask, monkeypatch))


def test_swin_t_800x1200(tmp_path):
    """The MM-Grounding-DINO-T / LLMDet-T architecture (Swin-T, BERT-base, 900 queries, per-layer heads)."""
    model, hf_model = transformers_pair(mm_grounding_dino("tiny"), tmp_path / "mm_swint")
    pixels, mask = preprocess_image(scene(900, 600))
    assert pixels.shape == (1, 3, 800, 1200)
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert_close(compare(model, hf_model, *single_caption(CAT_REMOTE), pixels, mask, monkeypatch))


def test_public_loader_and_names(tmp_path, monkeypatch):
    """A save_pretrained folder loads through GroundingDetector.from_pretrained, by path and by the short names
    (here from the HF cache, as after a download); an unknown name lists the known ones."""
    from tests.checkpoint.test_download import _fake_hub_cache

    monkeypatch.delenv("GROUNDING_DINO_CHECKPOINT", raising=False)
    _, hf_model = transformers_pair(mm_tiny(), tmp_path / "folder")
    detector = GroundingDetector.from_pretrained(tmp_path / "folder", device="cpu")
    assert detector.load_report.ok and detector.model.config.inverse_sigmoid_form == "ratio"  # the original's
    assert not detector.model.config.share_box_head and detector.model.class_embed[0].bias is not None
    assert detector.name == "folder"
    for name in ("mm_grounding_dino_tiny", "llmdet_large"):
        hub = KNOWN_WEIGHTS[name]
        snapshot = _fake_hub_cache(tmp_path / name, hub.repo_id, hub.filenames[0]).parent
        for filename in hub.filenames:
            (snapshot / filename).write_bytes((tmp_path / "folder" / filename).read_bytes())
        target = snapshot / hub.filenames[0]
        resolved = resolve_checkpoint(name, cache_dir=tmp_path / name)
        assert resolved == target.parent
        named = GroundingDetector.from_pretrained(name, device="cpu", cache_dir=tmp_path / name)
        assert named.load_report.ok and named.name == name
        assert torch.equal(named.model.class_embed[1].bias, detector.model.class_embed[1].bias)
    with pytest.raises(WeightsUnavailableError) as error:
        resolve_checkpoint("mm_grounding_dino_huge")
    assert "mm_grounding_dino_tiny" in str(error.value) and "llmdet_base" in str(error.value)

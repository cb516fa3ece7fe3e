"""Full-model parity: our GroundingDINO vs transformers' GroundingDinoForObjectDetection, same random weights.

transformers' model is loaded with `from_pretrained` from an HF checkpoint written through `grounding.keymap`
(the real loading path: no missing or unexpected keys allowed). Every parameter is random, so every weight
takes part. Compared in fp32: logits (finite entries; the -inf pattern must be equal) and boxes,
max abs diff <= 1e-4.

Query selection is a top-k over every image token. With random weights many selection scores are closer
to each other than fp32 rounding (at 800x1200, ~20k tokens, a few of the 900 selected have neighbours within
1e-5), so two correct implementations may rank such a pair in the opposite order; the decoder then pairs
those anchors with other content queries, and via self-attention every output moves by ~1e-3. So the
harness (1) checks that the selection scores of ALL tokens agree to 1e-4 and that both rank-ordered score
lists agree to 1e-4 (any rank difference is a tie at that level), then (2) hands our model transformers'
ranking and checks logits and boxes. Measured diffs are printed (`pytest -s`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from grounding.config import swint_ogc, tiny
from grounding.keymap import as_transformers_port
from grounding.model.preprocess import pad_batch, preprocess_image
from tests.fixtures.dino import load_hf_reference, random_model

TOLERANCE = 1e-4
CAT_REMOTE = [101, 1037, 4937, 1012, 1037, 6556, 2491, 1012, 102]  # "a cat . a remote control ."
DOG = [101, 3899, 1012, 102]  # "dog ."


@dataclass
class TopkReplay:
    """Wraps torch.topk: records the scores of each query selection (k == num_queries) and replays the
    first caller's (transformers') indices to the second caller (ours)."""

    num_queries: int
    original: object = torch.topk
    scores: list[torch.Tensor] = field(default_factory=list)
    indices: list[torch.Tensor] = field(default_factory=list)

    def __call__(self, input, k, dim=-1, *args, **kwargs):
        if k != self.num_queries or dim not in (1, -1) or input.dim() != 2:
            return self.original(input, k, dim, *args, **kwargs)
        self.scores.append(input.detach().clone())
        if len(self.indices) == 0:
            result = self.original(input, k, dim, *args, **kwargs)
            self.indices.append(result.indices)
            return result
        indices = self.indices[0]
        return torch.return_types.topk((input.gather(1, indices), indices))


def compare(model, hf_model, input_ids, attention_mask, pixel_values, pixel_mask, monkeypatch) -> dict[str, float]:
    replay = TopkReplay(model.config.num_queries)
    monkeypatch.setattr(torch, "topk", replay)
    with torch.inference_mode():
        theirs = hf_model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                          pixel_mask=pixel_mask.long())
        ours = model(input_ids, attention_mask, pixel_values=pixel_values, pixel_mask=pixel_mask)
    monkeypatch.undo()
    assert len(replay.scores) == 2, "each model must run exactly one query selection"

    # (1) selection scores of every token, and the rank-ordered lists each model would select on its own
    hf_scores, our_scores = replay.scores
    valid = torch.isfinite(hf_scores)
    assert torch.equal(valid, torch.isfinite(our_scores))
    score_diff = (hf_scores[valid] - our_scores[valid]).abs().max().item()
    k = model.config.num_queries
    hf_ranked = torch.topk(hf_scores, k, dim=1)
    our_ranked = torch.topk(our_scores, k, dim=1)
    ranked_diff = (hf_ranked.values - our_ranked.values).abs().max().item()
    rank_flips = int((hf_ranked.indices != our_ranked.indices).sum())

    # (2) outputs with the same ranking
    finite = torch.isfinite(theirs.logits)
    assert torch.equal(finite, torch.isfinite(ours.pred_logits))
    assert ours.pred_logits.shape == theirs.logits.shape
    diffs = {
        "selection_scores": score_diff,
        "ranked_scores": ranked_diff,
        "rank_flips": rank_flips,
        "logits": (ours.pred_logits[finite] - theirs.logits[finite]).abs().max().item(),
        "boxes": (ours.pred_boxes - theirs.pred_boxes).abs().max().item(),
        "logit_scale": theirs.logits[finite].abs().max().item(),
    }
    print(" ".join(f"{name}={value:.3g}" for name, value in diffs.items()))
    return diffs


def assert_close(diffs: dict[str, float]) -> None:
    for name in ("selection_scores", "ranked_scores", "logits", "boxes"):
        assert diffs[name] <= TOLERANCE, (name, diffs)


def scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth synthetic RGB picture (gradient + shapes), like a photo to the preprocessing."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 17.0) * np.cos(y / 23.0)], -1) * 255
    image = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.integers(0, width - 20), rng.integers(0, height - 20)
        box = [int(x0), int(y0), int(x0 + rng.integers(10, width // 3)), int(y0 + rng.integers(10, height // 3))]
        draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


def single_caption(ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids = torch.tensor([ids])
    return input_ids, torch.ones_like(input_ids)


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    model = random_model(as_transformers_port(tiny()), seed=0)
    hf_model, info = load_hf_reference(model, tmp_path_factory.mktemp("hf_tiny"))
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return model, hf_model


@pytest.mark.parametrize("height,width", [(97, 131), (203, 157), (320, 480), (131, 203)])
def test_tiny_config_odd_sizes(tiny_pair, height, width, monkeypatch):
    model, hf_model = tiny_pair
    pixels = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height + width))
    mask = torch.ones(1, height, width, dtype=torch.bool)
    diffs = compare(model, hf_model, *single_caption(CAT_REMOTE), pixels, mask, monkeypatch)
    assert_close(diffs)


def test_tiny_batch_of_two_different_captions_and_sizes(tiny_pair, monkeypatch):
    """Padded captions (text-enhancer block mask per sample) and padded images (pixel masks) together."""
    model, hf_model = tiny_pair
    pixels, mask = pad_batch([preprocess_image(scene(180, 150, seed=1), 150, 250),
                              preprocess_image(scene(140, 210, seed=2), 150, 250)])
    assert not mask.all()
    input_ids = torch.tensor([CAT_REMOTE, DOG + [0] * (len(CAT_REMOTE) - len(DOG))])
    attention_mask = (input_ids != 0).long()
    diffs = compare(model, hf_model, input_ids, attention_mask, pixels, mask, monkeypatch)
    assert_close(diffs)

    # each sample equals its own batch-of-one run (padding of the other sample does not leak in)
    with torch.inference_mode():
        batched = model(input_ids, attention_mask, pixel_values=pixels, pixel_mask=mask)
        alone = model(input_ids[1:, :4], attention_mask[1:, :4], pixel_values=pixels[1:], pixel_mask=mask[1:])
    finite = torch.isfinite(alone.pred_logits)
    assert torch.equal(finite, torch.isfinite(batched.pred_logits[1:]))
    assert (batched.pred_logits[1:][finite] - alone.pred_logits[finite]).abs().max() <= TOLERANCE
    assert (batched.pred_boxes[1:] - alone.pred_boxes).abs().max() <= TOLERANCE


def test_swin_t_800x1200(tmp_path):
    """Full Swin-T OGC architecture (BERT-base, 900 queries, 6+6 layers) at 800x1200."""
    model = random_model(as_transformers_port(swint_ogc()), seed=0)
    hf_model, info = load_hf_reference(model, tmp_path / "hf_swint")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    pixels, mask = preprocess_image(scene(900, 600))
    assert pixels.shape == (1, 3, 800, 1200)
    with pytest.MonkeyPatch.context() as monkeypatch:
        diffs = compare(model, hf_model, *single_caption(CAT_REMOTE), pixels, mask, monkeypatch)
    assert_close(diffs)

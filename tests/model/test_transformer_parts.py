"""Our transformer parts against the matching transformers submodules, with identical (mapped) random weights.

transformers' GroundingDinoForObjectDetection is the parity reference; these tests localise a difference to
one part. Weights are random but scaled so that every branch contributes (layer-scale gammas ~0.5, not the
1e-4 init), and batches hold two different images / captions with padding on both sides.
"""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from transformers import GroundingDinoConfig
from transformers.models.grounding_dino import modeling_grounding_dino as hf

from grounding.config import swint_ogc, tiny
from grounding.keymap import TRANSFORMERS_INVERSE_SIGMOID_EPS
from grounding.model.decoder import MLP, ContrastiveHead, Decoder, contrastive_logits, inverse_sigmoid
from grounding.model.encoder import (
    FeatureEnhancer,
    MultiScaleDeformableAttention,
    TextEnhancerLayer,
    sine_embedding,
)
from grounding.model.fusion import BiAttentionBlock
from grounding.model.grounding_dino import GroundingDINO
from grounding.model.query_selection import encoder_output_proposals, select_queries
from grounding.model.text_encoder import sub_sentence_masks
from grounding.ops.ms_deform_attn_torch import ms_deform_attn_torch

CFG = tiny()
SHAPES = [(12, 17), (6, 9), (3, 5), (2, 3)]  # odd sizes, as a ~96x136 image gives
TOL = 1e-5

# our (official) names -> transformers' names, applied in order to every key
ENCODER_RULES = [
    (r"^layers\.(\d+)\.self_attn\.", r"layers.\1.deformable_layer.self_attn."),
    (r"^layers\.(\d+)\.norm1\.", r"layers.\1.deformable_layer.self_attn_layer_norm."),
    (r"^layers\.(\d+)\.linear1\.", r"layers.\1.deformable_layer.fc1."),
    (r"^layers\.(\d+)\.linear2\.", r"layers.\1.deformable_layer.fc2."),
    (r"^layers\.(\d+)\.norm2\.", r"layers.\1.deformable_layer.final_layer_norm."),
    (r"^text_layers\.(\d+)\.", r"layers.\1.text_enhancer_layer."),
    (r"^fusion_layers\.(\d+)\.", r"layers.\1.fusion_layer."),
]
TEXT_LAYER_RULES = [
    (r"linear1\.", "fc1."), (r"linear2\.", "fc2."), (r"norm1\.", "layer_norm_before."),
    (r"norm2\.", "layer_norm_after."),
]
FUSION_RULES = [
    (r"gamma_v$", "vision_param"), (r"gamma_l$", "text_param"), (r"layer_norm_v\.", "layer_norm_vision."),
    (r"layer_norm_l\.", "layer_norm_text."), (r"attn\.v_proj\.", "attn.vision_proj."),
    (r"attn\.l_proj\.", "attn.text_proj."), (r"values_v_proj\.", "values_vision_proj."),
    (r"values_l_proj\.", "values_text_proj."), (r"out_v_proj\.", "out_vision_proj."),
    (r"out_l_proj\.", "out_text_proj."),
]
DECODER_RULES = [
    (r"^norm\.", "layer_norm."), (r"^ref_point_head\.", "reference_points_head."),
    (r"\.cross_attn\.", ".encoder_attn."), (r"\.norm1\.", ".encoder_attn_layer_norm."),
    (r"\.ca_text\.", ".encoder_attn_text."), (r"\.catext_norm\.", ".encoder_attn_text_layer_norm."),
    (r"\.norm2\.", ".self_attn_layer_norm."), (r"\.linear1\.", ".fc1."), (r"\.linear2\.", ".fc2."),
    (r"\.norm3\.", ".final_layer_norm."),
]


def to_hf(state: dict, rules: list) -> dict:
    """Rename keys and split nn.MultiheadAttention's packed in_proj into query/key/value."""
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        if key.endswith(("in_proj_weight", "in_proj_bias")):
            kind = "weight" if key.endswith("weight") else "bias"
            prefix = key.rsplit(".", 1)[0]
            for name, part in zip(("query", "key", "value"), value.chunk(3)):
                out[f"{prefix}.{name}.{kind}"] = part
        else:
            out[key] = value
    return out


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith(("gamma_v", "gamma_l")):
                param.copy_(0.5 + 0.1 * noise)
            elif param.ndim == 1 and ("norm" in name or "LayerNorm" in name) and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            elif param.ndim >= 2:
                param.copy_(noise / math.sqrt(param.shape[-1]))
            else:
                param.copy_(0.1 * noise)
    return module.eval()


def hf_config() -> GroundingDinoConfig:
    return GroundingDinoConfig(
        d_model=CFG.d_model, encoder_layers=CFG.encoder_layers, decoder_layers=CFG.decoder_layers,
        encoder_ffn_dim=CFG.encoder_ffn_dim, decoder_ffn_dim=CFG.decoder_ffn_dim,
        encoder_attention_heads=CFG.num_heads, decoder_attention_heads=CFG.num_heads,
        num_queries=CFG.num_queries, num_feature_levels=CFG.num_feature_levels,
        encoder_n_points=CFG.encoder_n_points, decoder_n_points=CFG.decoder_n_points,
        max_text_len=CFG.max_text_len, layer_norm_eps=CFG.layer_norm_eps, dropout=0.0, fusion_droppath=0.0,
    )


def image_inputs(seed: int = 0):
    """Two images' flattened features; the second is padded to ~2/3 of the width and ~3/4 of the height."""
    generator = torch.Generator().manual_seed(seed)
    masks = []  # True = padding
    for h, w in SHAPES:
        mask = torch.zeros(2, h, w, dtype=torch.bool)
        mask[1, math.ceil(h * 0.75):, :] = True
        mask[1, :, math.ceil(w * 0.66):] = True
        masks.append(mask)
    n = sum(h * w for h, w in SHAPES)
    src = torch.randn(2, n, CFG.d_model, generator=generator)
    pos = torch.randn(2, n, CFG.d_model, generator=generator)
    padding = torch.cat([m.flatten(1) for m in masks], 1)
    spatial_shapes = torch.tensor(SHAPES)
    level_start = torch.cat([torch.zeros(1, dtype=torch.long), spatial_shapes.prod(1).cumsum(0)[:-1]])
    ratios = torch.stack(
        [torch.stack([(~m[:, 0, :]).sum(1) / m.shape[2], (~m[:, :, 0]).sum(1) / m.shape[1]], -1) for m in masks], 1
    ).float()
    return src, pos, padding, spatial_shapes, level_start, ratios


def text_inputs(seed: int = 1):
    """'[CLS] a b . c . [SEP]' and the shorter '[CLS] d . [SEP] [PAD] [PAD]'."""
    ids = torch.tensor([[101, 2000, 2001, 1012, 2002, 1012, 102], [101, 2003, 1012, 102, 0, 0, 0]])
    block, position_ids = sub_sentence_masks(ids)
    token_mask = ids != 0
    text = torch.randn(2, ids.shape[1], CFG.d_model, generator=torch.Generator().manual_seed(seed))
    return text, token_mask, block, position_ids


def test_sine_embedding_matches_transformers():
    coords = torch.rand(2, 5, 4)
    ours = sine_embedding(coords, 16)
    assert torch.allclose(ours, hf.encode_sinusoidal_position_embedding(coords, num_pos_feats=16), atol=1e-6)
    positions = torch.tensor([[0, 0, 1, 2, 0], [3, 1, 0, 0, 0]])[..., None].float()
    ours = sine_embedding(positions, 32)
    assert torch.allclose(ours, hf.encode_sinusoidal_position_embedding(positions, num_pos_feats=32), atol=1e-6)


def test_fusion_matches_transformers():
    ours = randomize(BiAttentionBlock(CFG.d_model, CFG.fusion_dim, CFG.fusion_heads), seed=2)
    reference = hf.GroundingDinoFusionLayer(hf_config()).eval()
    reference.load_state_dict(to_hf(ours.state_dict(), FUSION_RULES))
    src, _, padding, *_ = image_inputs()
    text, token_mask, *_ = text_inputs()
    src, text = 3 * src, 3 * text  # sharper softmaxes
    with torch.no_grad():
        vision, text_out = ours(src, text, padding, ~token_mask)
        (ref_vision, _), (ref_text, _) = reference(src, text, padding, ~token_mask)
    assert (vision - ref_vision).abs().max() < TOL
    assert (text_out - ref_text).abs().max() < TOL
    # the update is not negligible (the check above would be vacuous otherwise)
    assert (vision - F.layer_norm(src, (CFG.d_model,))).abs().max() > 0.05


def test_text_enhancer_matches_transformers_for_different_captions():
    ours = randomize(TextEnhancerLayer(CFG.d_model, CFG.text_enhancer_ffn_dim, CFG.text_enhancer_heads), seed=3)
    reference = hf.GroundingDinoTextEnhancerLayer(hf_config()).eval()
    reference.load_state_dict(to_hf(ours.state_dict(), TEXT_LAYER_RULES))
    text, _, block, position_ids = text_inputs()
    pos = sine_embedding(position_ids[..., None].float(), CFG.d_model)
    with torch.no_grad():
        out = ours(text, pos, block)
        ref, _ = reference(text, attention_masks=block, position_embeddings=pos)
        singles = [ours(text[i : i + 1], pos[i : i + 1], block[i : i + 1]) for i in range(2)]
    assert (out - ref).abs().max() < TOL
    assert (out - torch.cat(singles)).abs().max() < TOL  # batch rows are independent


def encoder_pair(seed: int):
    c = CFG
    ours = randomize(FeatureEnhancer(
        c.encoder_layers, c.d_model, c.encoder_ffn_dim, c.num_heads, c.num_feature_levels, c.encoder_n_points,
        c.text_enhancer_ffn_dim, c.text_enhancer_heads, c.fusion_dim, c.fusion_heads,
    ), seed)
    reference = hf.GroundingDinoEncoder(hf_config()).eval()
    # the deformable layers' names are mapped first, so the remaining norm1/linear1/... are the text layers'
    reference.load_state_dict(to_hf(ours.state_dict(), ENCODER_RULES + TEXT_LAYER_RULES + FUSION_RULES))
    return ours, reference


def test_encoder_matches_transformers():
    ours, reference = encoder_pair(seed=4)
    src, pos, padding, shapes, starts, ratios = image_inputs()
    text, token_mask, block, position_ids = text_inputs()
    with torch.no_grad():
        memory, text_out = ours(src, pos, padding, shapes, starts, ratios, text, ~token_mask, block, position_ids)
        ref = reference(
            vision_features=src, vision_attention_mask=padding, vision_position_embedding=pos,
            spatial_shapes=shapes, spatial_shapes_list=SHAPES, level_start_index=starts, valid_ratios=ratios,
            text_features=text, text_attention_mask=~token_mask, text_self_attention_masks=~block,
            text_position_ids=position_ids, return_dict=True,
        )
    assert (memory - ref.last_hidden_state_vision).abs().max() < TOL
    assert (text_out - ref.last_hidden_state_text).abs().max() < TOL


def decoder_pair(seed: int):
    c = CFG
    ours = randomize(Decoder(c.decoder_layers, c.d_model, c.decoder_ffn_dim, c.num_heads, c.num_feature_levels,
                             c.decoder_n_points, inverse_sigmoid_eps=TRANSFORMERS_INVERSE_SIGMOID_EPS,
                             inverse_sigmoid_form="logit"), seed)
    box_head = randomize(MLP(c.d_model, c.d_model, 4, 3), seed + 1)
    ours.bbox_embed = torch.nn.ModuleList([box_head] * c.decoder_layers)
    reference = hf.GroundingDinoDecoder(hf_config()).eval()
    reference.bbox_embed = torch.nn.ModuleList(
        [hf.GroundingDinoMLPPredictionHead(c.d_model, c.d_model, 4, 3) for _ in range(c.decoder_layers)]
    )
    reference.load_state_dict(to_hf(ours.state_dict(), DECODER_RULES))
    return ours, reference


def test_decoder_matches_transformers():
    ours, reference = decoder_pair(seed=5)
    memory, _, padding, shapes, starts, ratios = image_inputs()
    text, token_mask, *_ = text_inputs()
    generator = torch.Generator().manual_seed(6)
    tgt = torch.randn(2, CFG.num_queries, CFG.d_model, generator=generator)
    boxes = 0.1 + 0.8 * torch.rand(2, CFG.num_queries, 4, generator=generator)
    with torch.no_grad():
        outputs, references = ours(tgt, boxes, memory, padding, shapes, starts, ratios, text, ~token_mask)
        ref = reference(
            inputs_embeds=tgt, vision_encoder_hidden_states=memory, vision_encoder_attention_mask=~padding,
            text_encoder_hidden_states=text, text_encoder_attention_mask=~token_mask, reference_points=boxes,
            spatial_shapes=shapes, spatial_shapes_list=SHAPES, level_start_index=starts, valid_ratios=ratios,
            return_dict=True,
        )
    for layer, output in enumerate(outputs):
        assert (output - ref.intermediate_hidden_states[:, layer]).abs().max() < TOL
    for layer, boxes_in in enumerate(references[1:]):
        assert (boxes_in - ref.intermediate_reference_points[:, layer]).abs().max() < TOL


@pytest.mark.parametrize("eps", [1e-3, TRANSFORMERS_INVERSE_SIGMOID_EPS])  # official, transformers
def test_inverse_sigmoid_logit_form_clamps_x_at_eps(eps):
    x = torch.tensor([0.0, 1e-6, 0.3, 1 - 1e-6, 1.0], dtype=torch.float64)
    low, high = math.log(eps / (1 - eps)), math.log((1 - eps) / eps)
    expected = torch.tensor([low, low, math.log(0.3 / 0.7), high, high], dtype=torch.float64)
    assert torch.allclose(inverse_sigmoid(x, eps, "logit"), expected, atol=1e-9)


def test_inverse_sigmoid_ratio_form_is_the_originals():
    """The original code and mmdet: log(max(x, eps) / max(1 - x, eps)) after clamping x to [0, 1]."""
    eps = 1e-3
    x = torch.tensor([-0.5, 0.0, 1e-6, 0.3, 1 - 1e-6, 1.0, 1.5], dtype=torch.float64)
    clamped = x.clamp(0, 1)
    expected = torch.log(clamped.clamp(min=eps) / (1 - clamped).clamp(min=eps))
    assert torch.allclose(inverse_sigmoid(x, eps), expected, atol=1e-12)
    assert inverse_sigmoid(x, eps)[1].item() == pytest.approx(math.log(eps))  # not log(eps / (1 - eps))
    assert (inverse_sigmoid(x, eps) - inverse_sigmoid(x, eps, "logit")).abs().max() < 1.01e-3  # near 0 and 1 only


def test_official_clamp_is_the_default():
    assert tiny().inverse_sigmoid_eps == swint_ogc().inverse_sigmoid_eps == 1e-3
    assert tiny().inverse_sigmoid_form == swint_ogc().inverse_sigmoid_form == "ratio"


def test_contrastive_logits_match_transformers():
    queries = torch.randn(2, 5, CFG.d_model)
    text, token_mask, *_ = text_inputs()
    ours = contrastive_logits(queries, text, token_mask, 256)
    ref = hf.GroundingDinoContrastiveEmbedding(hf_config())(queries, text, token_mask)
    assert ours.shape == (2, 5, 256)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    finite = torch.isfinite(ref)
    assert (ours[finite] - ref[finite]).abs().max() < 1e-6
    assert torch.isinf(ours[1, :, 4:]).all() and torch.isinf(ours[:, :, 7:]).all()


def test_query_selection_matches_transformers():
    memory, _, padding, *_ = image_inputs(seed=7)
    text, token_mask, *_ = text_inputs()
    config = hf_config()
    reference = hf.GroundingDinoModel.__new__(hf.GroundingDinoModel)
    torch.nn.Module.__init__(reference)
    reference.enc_output = randomize(torch.nn.Linear(CFG.d_model, CFG.d_model), 8)
    reference.enc_output_norm = torch.nn.LayerNorm(CFG.d_model)
    box_head = randomize(MLP(CFG.d_model, CFG.d_model, 4, 3), 9)
    with torch.no_grad():
        ref_memory, ref_proposals = reference.generate_encoder_output_proposals(memory, padding, SHAPES)
        masked, proposals = encoder_output_proposals(memory, padding, SHAPES)
        assert torch.equal(torch.isinf(proposals), torch.isinf(ref_proposals))
        finite = torch.isfinite(proposals)
        assert (proposals[finite] - ref_proposals[finite]).abs().max() < 1e-6
        assert (reference.enc_output_norm(reference.enc_output(masked)) - ref_memory).abs().max() < 1e-6

        selection = select_queries(memory, padding, SHAPES, text, token_mask, reference.enc_output,
                                   reference.enc_output_norm, box_head, ContrastiveHead(config.max_text_len),
                                   CFG.num_queries)
        scores = contrastive_logits(ref_memory, text, token_mask, 256).max(-1).values
        top = scores.topk(CFG.num_queries, dim=1).indices
        ref_boxes = torch.gather(box_head(ref_memory) + ref_proposals, 1, top[..., None].expand(-1, -1, 4))
    assert (selection.reference_points - ref_boxes.sigmoid()).abs().max() < 1e-6
    assert not selection.reference_points.requires_grad
    gathered = torch.gather(ref_memory, 1, top[..., None].expand(-1, -1, CFG.d_model))
    assert (selection.enc_logits - contrastive_logits(gathered, text, token_mask, 256)).nan_to_num().abs().max() < 1e-5


def grid_sample_reference(value, shapes, sampling_locations, attention_weights):
    """The formulation of the official pure-PyTorch fallback (per level grid_sample, weighted sum)."""
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        v = values[level].flatten(2).transpose(1, 2).reshape(batch * heads, dim, h, w)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(batch, heads * dim, queries).transpose(1, 2)


def deform_inputs(batch: int, queries: int, dtype=torch.float32):
    generator = torch.Generator().manual_seed(10)
    heads, dim, points = 4, 8, 3
    n = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, n, heads, dim, generator=generator, dtype=dtype)
    # locations spill outside [0, 1] so zero padding of out-of-range corners is exercised
    locations = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=generator, dtype=dtype)
    locations = locations * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=generator, dtype=dtype)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    shapes = torch.tensor(SHAPES)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), shapes.prod(1).cumsum(0)[:-1]])
    return value, shapes, starts, locations, weights


@pytest.mark.parametrize("batch,queries", [(1, 7), (2, 300)])
def test_ms_deform_attn_torch_matches_grid_sample(batch, queries, monkeypatch):
    monkeypatch.setattr("grounding.ops.ms_deform_attn_torch.QUERY_CHUNK", 128)  # several chunks
    value, shapes, starts, locations, weights = deform_inputs(batch, queries)
    ours = ms_deform_attn_torch(value, shapes, starts, locations, weights)
    ref = grid_sample_reference(value, SHAPES, locations, weights)
    assert ours.shape == (batch, queries, value.shape[2] * value.shape[3])
    assert (ours - ref).abs().max() < 1e-5


def test_ms_deform_attn_torch_gradients_match_grid_sample():
    inputs = deform_inputs(2, 50, dtype=torch.float64)
    value, shapes, starts, locations, weights = inputs
    grads = []
    for fn in (lambda v, l, w: ms_deform_attn_torch(v, shapes, starts, l, w),
               lambda v, l, w: grid_sample_reference(v, SHAPES, l, w)):
        leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
        fn(*leaves).pow(2).sum().backward()
        grads.append([t.grad for t in leaves])
    for ours, ref in zip(*grads):
        assert (ours - ref).abs().max() < 1e-8


def test_official_init():
    attention = MultiScaleDeformableAttention(d_model=32, num_heads=4, num_levels=2, num_points=3)
    offsets = attention.sampling_offsets.bias.view(4, 2, 3, 2)
    rays = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    for point in range(3):
        assert torch.allclose(offsets[:, 1, point], rays * (point + 1), atol=1e-6)
    assert not attention.sampling_offsets.weight.any() and not attention.attention_weights.weight.any()

    model = GroundingDINO(CFG)
    last = model.bbox_embed[0].layers[-1]
    assert not last.weight.any() and not last.bias.any()
    assert model.transformer.decoder.bbox_embed[-1] is model.bbox_embed[0]
    assert model.transformer.level_embed.std() > 0.5  # normal(0, 1)


def test_level_index_is_cached_per_size_and_device_and_usable_for_training():
    transformer = GroundingDINO(tiny()).transformer
    shapes = [(12, 20), (6, 10), (3, 5), (2, 3)]
    with torch.inference_mode():  # as the detector first runs it
        spatial_shapes, starts = transformer.level_index(shapes, torch.device("cpu"))
    assert spatial_shapes.tolist() == [list(s) for s in shapes] and starts.tolist() == [0, 240, 300, 315]
    assert not spatial_shapes.is_inference() and not starts.is_inference()  # may be saved for backward later
    again = transformer.level_index(shapes, torch.device("cpu"))
    assert again[0] is spatial_shapes and again[1] is starts  # no new host->device copy per forward
    assert not any("level_index" in key for key in transformer.state_dict())

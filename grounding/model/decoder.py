"""Cross-modality decoder (official `TransformerDecoder` + `DeformableTransformerDecoderLayer`), the box MLP
and the contrastive classification head.

Per layer: self-attention -> norm2, text cross-attention -> catext_norm, deformable cross-attention on the
encoder memory -> norm1, FFN -> norm3. The query position comes from the sine embedding of the current
reference boxes (scaled by the valid ratios) through `ref_point_head`. Boxes are refined iteratively from
the *un-normed* layer outputs with `bbox_embed` (one shared MLP, or one per layer in mmdet's models);
`decoder.norm` is applied only to the outputs handed to the heads.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grounding.model.encoder import MultiScaleDeformableAttention, sine_embedding

def full_precision(x: Tensor) -> Tensor:
    """fp16/bf16 (autocast outputs) -> fp32; fp32 and fp64 unchanged. For the rounding-sensitive box math."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def inverse_sigmoid(x: Tensor, eps: float, form: str = "ratio") -> Tensor:
    """log(x / (1 - x)), kept finite at 0 and 1 as `GroundingDINOConfig.inverse_sigmoid_form` says:
    "ratio" log(max(x, eps) / max(1 - x, eps)) (original code, mmdet), "logit" x clamped to [eps, 1 - eps]
    (transformers)."""
    if form == "logit":
        return torch.special.logit(x, eps=eps)
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class MLP(nn.Module):
    """Linear layers with ReLU between them (keys `layers.{i}`)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims, outs))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def contrastive_logits(
    queries: Tensor, text: Tensor, text_token_mask: Tensor, max_text_len: int, bias: Tensor | None = None
) -> Tensor:
    """Dot product of queries with text tokens, -inf for padded tokens and for columns T..max_text_len-1.
    With `bias` (mmdet's head), the dot product is scaled by 1/sqrt(d) and the bias added.

    Args:
        queries: [B, Q, d]; text: [B, T, d]; text_token_mask: [B, T] bool, True = real token; bias: [] or None.
    Returns:
        [B, Q, max_text_len]
    """
    # fp32 even under autocast: these scores pick the top-k queries and are compared with the thresholds
    with torch.autocast(queries.device.type, enabled=False):
        logits = full_precision(queries) @ full_precision(text).transpose(-1, -2)  # [B, Q, T]
        if bias is not None:
            logits = logits / math.sqrt(queries.shape[-1]) + bias.float()
    logits = logits.masked_fill(~text_token_mask[:, None, :], float("-inf"))
    padded = logits.new_full((*logits.shape[:-1], max_text_len), float("-inf"))
    padded[..., : logits.shape[-1]] = logits
    return padded


class ContrastiveHead(nn.Module):
    """The classification head: `contrastive_logits` of queries and text. The official model's has no weights;
    mmdet's (`with_bias`) holds its learnable bias (key `bias`), initialised so a logit starts at p = 0.01."""

    def __init__(self, max_text_len: int, with_bias: bool = False):
        super().__init__()
        self.max_text_len = max_text_len
        self.bias = nn.Parameter(torch.tensor(-math.log((1 - 0.01) / 0.01))) if with_bias else None

    def forward(self, queries: Tensor, text: Tensor, text_token_mask: Tensor) -> Tensor:
        """queries [B, Q, d], text [B, T, d], text_token_mask [B, T] -> logits [B, Q, max_text_len]."""
        return contrastive_logits(queries, text, text_token_mask, self.max_text_len, self.bias)


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int, num_heads: int, num_levels: int, num_points: int,
                 layer_norm_eps: float = 1e-5):
        super().__init__()
        self.cross_attn = MultiScaleDeformableAttention(d_model, num_heads, num_levels, num_points)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.ca_text = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.catext_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps)

    def forward(
        self,
        tgt: Tensor,  # [B, Q, d]
        query_pos: Tensor,  # [B, Q, d]
        reference_points: Tensor,  # [B, Q, L, 4] scaled by valid ratios
        memory: Tensor,  # [B, N, d]
        memory_padding: Tensor,  # [B, N] bool, True = padding
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        text: Tensor,  # [B, T, d]
        text_padding: Tensor,  # [B, T] bool, True = padding
    ) -> Tensor:  # [B, Q, d]
        query = tgt + query_pos
        tgt = self.norm2(tgt + self.self_attn(query, query, tgt, need_weights=False)[0])
        attended = self.ca_text(tgt + query_pos, text, text, key_padding_mask=text_padding, need_weights=False)[0]
        tgt = self.catext_norm(tgt + attended)
        attended = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, level_start_index,
                                   memory_padding)
        tgt = self.norm1(tgt + attended)
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt), inplace=True)))


class Decoder(nn.Module):
    """Keys: `layers.{i}`, `norm`, `ref_point_head`, and the owner's heads under their aliases `bbox_embed.{i}`
    (box MLPs, shared or per layer) and `class_embed.{i}` (set by the owner)."""

    def __init__(self, num_layers: int, d_model: int, ffn_dim: int, num_heads: int, num_levels: int,
                 num_points: int, layer_norm_eps: float = 1e-5, inverse_sigmoid_eps: float = 1e-3,
                 inverse_sigmoid_form: str = "ratio"):
        super().__init__()
        self.d_model = d_model
        self.inverse_sigmoid_eps = inverse_sigmoid_eps
        self.inverse_sigmoid_form = inverse_sigmoid_form
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, ffn_dim, num_heads, num_levels, num_points, layer_norm_eps)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.bbox_embed: nn.ModuleList | None = None
        self.class_embed: nn.ModuleList | None = None

    def forward(
        self,
        tgt: Tensor,  # [B, Q, d] content queries
        reference_points: Tensor,  # [B, Q, 4] sigmoid boxes cxcywh (detached)
        memory: Tensor,  # [B, N, d]
        memory_padding: Tensor,  # [B, N] bool, True = padding
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,  # [B, L, 2]
        text: Tensor,  # [B, T, d]
        text_padding: Tensor,  # [B, T] bool, True = padding
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Returns the normed output of every layer ([B, Q, d] each) and the reference boxes each layer
        started from ([B, Q, 4] each: the input, then the refined boxes, undetached)."""
        if self.bbox_embed is None:
            raise RuntimeError("Decoder.bbox_embed must be set to the shared box MLPs before use")
        ratios = torch.cat([valid_ratios, valid_ratios], -1)[:, None]  # [B, 1, L, 4]
        outputs, references = [], [reference_points]
        for layer, box_head in zip(self.layers, self.bbox_embed):
            scaled = reference_points[:, :, None] * ratios  # [B, Q, L, 4]
            query_pos = self.ref_point_head(sine_embedding(scaled[:, :, 0], self.d_model // 2))  # [B, Q, d]
            tgt = layer(tgt, query_pos, scaled, memory, memory_padding, spatial_shapes, level_start_index,
                        text, text_padding)
            reference_logits = inverse_sigmoid(
                full_precision(reference_points), self.inverse_sigmoid_eps, self.inverse_sigmoid_form
            )
            refined = (full_precision(box_head(tgt)) + reference_logits).sigmoid()
            # the next layer starts from detached boxes; the heads see the undetached ones (official)
            reference_points = refined.detach()
            references.append(refined)
            outputs.append(self.norm(tgt))
        return outputs, references[:-1]

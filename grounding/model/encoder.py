"""Feature enhancer (official `TransformerEncoder`): per layer image<->text fusion, text self-attention
(the "text enhancer"), then multi-scale deformable self-attention over the image tokens. Post-norm.

Also holds the two building blocks the decoder reuses: `MultiScaleDeformableAttention` and
`sine_embedding` (the sine features of normalised coordinates / integer positions).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grounding.model.fusion import BiAttentionBlock
from grounding.ops import ms_deform_attn


def sine_embedding(coords: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """Sine/cosine features of each coordinate, interleaved (sin, cos) per frequency.

    Args:
        coords: [..., C] values (normalised box coordinates or integer positions); each is multiplied by 2*pi.
        num_feats: features per coordinate.
    Returns:
        [..., C * num_feats], coordinates in the given order except that the first two are swapped
        (DETR's (y, x, ...) convention) when C >= 2.
    """
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    angles = coords.float()[..., None] * (2 * math.pi) / dim_t  # [..., C, F]
    embed = torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)
    if coords.shape[-1] >= 2:
        embed = torch.cat([embed[..., 1:2, :], embed[..., 0:1, :], embed[..., 2:, :]], dim=-2)
    return embed.flatten(-2).to(coords.dtype if coords.is_floating_point() else torch.float32)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention (Deformable DETR): each query samples n_points per head and level around its
    reference point and mixes them with softmaxed weights. The sampling runs in `grounding.ops.ms_deform_attn`."""

    def __init__(self, d_model: int, num_heads: int, num_levels: int, num_points: int):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads, self.num_levels, self.num_points = num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(d_model, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(d_model, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: offsets start on rays in M directions at distances 1..n_points, uniform weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values  # [M, 2]
        distances = torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        grid = directions.view(self.num_heads, 1, 1, 2) * distances  # [M, 1, P, 2]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.expand(-1, self.num_levels, -1, -1).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for projection in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def forward(
        self,
        query: Tensor,  # [B, Q, d] (position embedding already added)
        reference_points: Tensor,  # [B, Q, L, 2] (x, y) or [B, Q, L, 4] (cx, cy, w, h), normalised
        value: Tensor,  # [B, S, d]
        spatial_shapes: Tensor,  # [L, 2] int64 (H, W)
        level_start_index: Tensor,  # [L] int64
        value_padding: Tensor | None = None,  # [B, S] bool, True = padding
    ) -> Tensor:  # [B, Q, d]
        batch, num_queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(value)
        if value_padding is not None and value_padding.any():
            value = value.masked_fill(value_padding[..., None], 0.0)
        value = value.view(batch, value.shape[1], heads, -1)  # [B, S, M, D]
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = F.softmax(weights, -1).view(batch, num_queries, heads, levels, points)
        if reference_points.shape[-1] == 2:
            normaliser = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)  # [L, 2] (W, H)
            locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(f"reference_points must end in 2 or 4 coordinates, got {reference_points.shape[-1]}")
        output = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)  # [B, Q, d]
        return self.output_proj(output)


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over image tokens -> norm1, FFN -> norm2."""

    def __init__(self, d_model: int, ffn_dim: int, num_heads: int, num_levels: int, num_points: int,
                 layer_norm_eps: float = 1e-5):
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(d_model, num_heads, num_levels, num_points)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Tensor,
                level_start_index: Tensor, padding: Tensor | None) -> Tensor:  # [B, N, d]
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding)
        src = self.norm1(src + attended)
        return self.norm2(src + self.linear2(F.relu(self.linear1(src), inplace=True)))


class TextEnhancerLayer(nn.Module):
    """Text self-attention restricted to the sub-sentence blocks (no key padding mask) -> norm1, FFN -> norm2."""

    def __init__(self, d_model: int, ffn_dim: int, num_heads: int, layer_norm_eps: float = 1e-5):
        super().__init__()
        self.num_heads = num_heads
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)

    def forward(self, text: Tensor, pos: Tensor, block_mask: Tensor) -> Tensor:  # [B, T, d]
        # Batch-major head expansion (row b * H + h), which nn.MultiheadAttention expects. The official code
        # tiles with .repeat(H, 1, 1), pairing captions with the wrong masks when B > 1.
        attn_mask = ~block_mask.repeat_interleave(self.num_heads, dim=0)  # [B*H, T, T], True = blocked
        query = text + pos
        attended = self.self_attn(query, query, text, attn_mask=attn_mask, need_weights=False)[0]
        text = self.norm1(text + attended)
        return self.norm2(text + self.linear2(F.relu(self.linear1(text), inplace=True)))


def encoder_reference_points(spatial_shapes: list[tuple[int, int]], valid_ratios: Tensor) -> Tensor:
    """Pixel centres of every level, normalised by the valid (unpadded) size, then scaled per level.

    Args:
        spatial_shapes: L pairs (H, W); valid_ratios: [B, L, 2] (w, h).
    Returns:
        [B, N, L, 2] (x, y).
    """
    points = []
    for level, (height, width) in enumerate(spatial_shapes):
        ys = torch.linspace(0.5, height - 0.5, height, dtype=valid_ratios.dtype, device=valid_ratios.device)
        xs = torch.linspace(0.5, width - 0.5, width, dtype=valid_ratios.dtype, device=valid_ratios.device)
        ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
        points.append(torch.stack((ref_x, ref_y), -1))
    reference = torch.cat(points, 1)  # [B, N, 2]
    return reference[:, :, None] * valid_ratios[:, None]


class FeatureEnhancer(nn.Module):
    """The encoder: `fusion_layers[i]` -> `text_layers[i]` -> `layers[i]` for each of the layers."""

    def __init__(self, num_layers: int, d_model: int, ffn_dim: int, num_heads: int, num_levels: int,
                 num_points: int, text_ffn_dim: int, text_heads: int, fusion_dim: int, fusion_heads: int,
                 layer_norm_eps: float = 1e-5):
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(d_model, ffn_dim, num_heads, num_levels, num_points, layer_norm_eps)
            for _ in range(num_layers)
        )
        self.text_layers = nn.ModuleList(
            TextEnhancerLayer(d_model, text_ffn_dim, text_heads, layer_norm_eps) for _ in range(num_layers)
        )
        self.fusion_layers = nn.ModuleList(
            BiAttentionBlock(d_model, fusion_dim, fusion_heads, layer_norm_eps) for _ in range(num_layers)
        )

    def forward(
        self,
        src: Tensor,  # [B, N, d] flattened image tokens of all levels
        pos: Tensor,  # [B, N, d] sine position + level embedding
        padding: Tensor,  # [B, N] bool, True = padding
        spatial_shapes: Tensor,  # [L, 2] int64 (H, W)
        level_start_index: Tensor,  # [L]
        valid_ratios: Tensor,  # [B, L, 2] (w, h)
        text: Tensor,  # [B, T, d]
        text_padding: Tensor,  # [B, T] bool, True = padding
        block_mask: Tensor,  # [B, T, T] bool, True = may attend
        position_ids: Tensor,  # [B, T] int64
        level_shapes: list[tuple[int, int]] | None = None,  # spatial_shapes as Python ints (saves a device sync)
    ) -> tuple[Tensor, Tensor]:  # memory [B, N, d], enhanced text [B, T, d]
        shapes = level_shapes or [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
        reference_points = encoder_reference_points(shapes, valid_ratios)  # [B, N, L, 2]
        text_pos = sine_embedding(position_ids[..., None].to(text.dtype), self.d_model)  # [B, T, d]
        for fusion, text_layer, layer in zip(self.fusion_layers, self.text_layers, self.layers):
            src, text = fusion(src, text, padding, text_padding)
            text = text_layer(text, text_pos, block_mask)
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index, padding)
        return src, text

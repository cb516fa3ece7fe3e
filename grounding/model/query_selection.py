"""Language-guided query selection (two-stage "standard"): every encoder token proposes a box around its
pixel; the `num_queries` tokens whose best text-token score is highest become the decoder's anchors.

The anchors are detached; the decoder's content queries are the learned `tgt_embed`, not the selected
features (`embed_init_tgt`). The selected features and boxes are returned too, as the encoder-stage
predictions used by the training losses.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from grounding.model.decoder import MLP, ContrastiveHead, full_precision


@dataclass
class SelectedQueries:
    reference_points: Tensor  # [B, Q, 4] sigmoid boxes cxcywh, detached (decoder input)
    enc_logits: Tensor  # [B, Q, max_text_len] contrastive logits of the selected encoder features
    enc_boxes: Tensor  # [B, Q, 4] sigmoid boxes of the selected proposals (undetached)


def encoder_output_proposals(
    memory: Tensor,  # [B, N, d]
    padding: Tensor,  # [B, N] bool, True = padding
    spatial_shapes: list[tuple[int, int]],
) -> tuple[Tensor, Tensor]:
    """One box per token: centre of its pixel in the valid area, size 0.05 * 2**level.

    Returns:
        memory with padded / invalid tokens zeroed [B, N, d], and the proposals as logits [B, N, 4]
        (+inf for padded tokens and for boxes not inside (0.01, 0.99)).
    """
    batch = memory.shape[0]
    dtype = torch.promote_types(memory.dtype, torch.float32)  # fp32 grids under autocast
    proposals = []
    start = 0
    for level, (height, width) in enumerate(spatial_shapes):
        level_padding = padding[:, start : start + height * width].view(batch, height, width)
        valid_h = (~level_padding[:, :, 0]).sum(1)  # [B]
        valid_w = (~level_padding[:, 0, :]).sum(1)
        ys = torch.linspace(0, height - 1, height, dtype=dtype, device=memory.device)
        xs = torch.linspace(0, width - 1, width, dtype=dtype, device=memory.device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([grid_x, grid_y], -1)  # [H, W, 2] (x, y)
        scale = torch.stack([valid_w, valid_h], -1).view(batch, 1, 1, 2)
        centres = (grid[None].expand(batch, -1, -1, -1) + 0.5) / scale
        sizes = torch.ones_like(centres) * 0.05 * (2.0**level)
        proposals.append(torch.cat((centres, sizes), -1).view(batch, -1, 4))
        start += height * width
    proposals = torch.cat(proposals, 1)  # [B, N, 4]
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)  # [B, N, 1]
    proposals = torch.log(proposals / (1 - proposals))
    proposals = proposals.masked_fill(padding[..., None], float("inf")).masked_fill(~valid, float("inf"))
    memory = memory.masked_fill(padding[..., None], 0.0).masked_fill(~valid, 0.0)
    return memory, proposals


def select_queries(
    memory: Tensor,  # [B, N, d] encoder output
    padding: Tensor,  # [B, N] bool, True = padding
    spatial_shapes: list[tuple[int, int]],
    text: Tensor,  # [B, T, d] enhanced text
    text_token_mask: Tensor,  # [B, T] bool, True = real token
    enc_output: nn.Linear,
    enc_output_norm: nn.LayerNorm,
    enc_out_bbox_embed: MLP,
    enc_out_class_embed: ContrastiveHead,
    num_queries: int,
) -> SelectedQueries:
    memory, proposals = encoder_output_proposals(memory, padding, spatial_shapes)
    output_memory = enc_output_norm(enc_output(memory))  # [B, N, d]
    scores = enc_out_class_embed(output_memory, text, text_token_mask).max(-1).values  # [B, N]
    top = torch.topk(scores, num_queries, dim=1).indices  # [B, Q]
    # Only the selected tokens need the box head (same values as running it on all N and gathering).
    selected_memory = torch.gather(output_memory, 1, top[..., None].expand(-1, -1, output_memory.shape[-1]))
    selected_proposals = torch.gather(proposals, 1, top[..., None].expand(-1, -1, 4))
    box_logits = full_precision(enc_out_bbox_embed(selected_memory)) + selected_proposals  # [B, Q, 4] fp32
    return SelectedQueries(
        reference_points=box_logits.detach().sigmoid(),
        enc_logits=enc_out_class_embed(selected_memory, text, text_token_mask),
        enc_boxes=box_logits.sigmoid(),
    )

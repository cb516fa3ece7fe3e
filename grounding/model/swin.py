"""Swin Transformer image backbone (arXiv 2103.14030) as the official Grounding DINO checkpoints use it.

Module and parameter names are those of the official detection Swin, so `state_dict()` keys read
`patch_embed.proj`, `layers.{s}.blocks.{b}.attn.qkv`, `layers.{s}.downsample.reduction` (patch merging at
the END of stage s), `norm{i}` for every output stage i.

Why our own and not timm's `SwinTransformer`: timm (1.0.x) rolls the feature map for the shifted window
BEFORE padding it to a multiple of the window, the official code pads first and then rolls. The two give
different numbers whenever a stage map is not a multiple of the window (at 800x1200 with window 7 every
stage), so timm cannot reproduce the checkpoints' behaviour. Measured with the same random Swin-T weights
(timm 1.0.31, `strict_img_size=False, dynamic_img_size=True, always_partition=True`, merging keys moved one
stage on): 0 difference at 224x224, but max abs 1.6 at 224x320 and 1.9 at 800x1200 on the stage outputs.
timm also puts patch merging at the start of the next stage, which would need a key remap on every load.
transformers' `SwinBackbone` is numerically the official algorithm (it runs with `always_partition=True`), and
the tests compare against it.

Semantics (from the official code): the input is zero-padded to a multiple of the patch size; each block
LayerNorms, zero-pads to a multiple of the window, rolls by window//2 on odd blocks, attends inside windows
with a relative position bias (and the -100 shifted-window mask), crops and adds the residual; patch
merging zero-pads odd sizes and concatenates x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2].
The window is never clamped to small feature maps. Inference only: no dropout / drop-path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grounding.config import SwinConfig


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] (H, W multiples of `window`) -> [B * nW, window * window, C]."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """[B * nW, window * window, C] -> [B, height, width, C]."""
    c = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height, width, c)


def shifted_window_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Additive mask [nW, N, N] (0 or -100) that keeps attention inside the regions a cyclic shift joined.

    `height` and `width` are the padded sizes (multiples of `window`); N = window * window.
    """
    def regions(size: int) -> torch.Tensor:
        idx = torch.arange(size, device=device)
        return (idx >= size - window).long() + (idx >= size - shift).long()  # 0, 1, 2 per axis

    label = (regions(height)[:, None] * 3 + regions(width)[None, :]).float()  # [H, W]
    label = window_partition(label[None, :, :, None], window).squeeze(-1)  # [nW, N]
    different = label[:, None, :] != label[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(different, -100.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # [N, N, 2]
        # Recomputed from the window size; official checkpoints carry it too (ignored on load).
        self.register_buffer(
            "relative_position_index", relative[..., 0] * (2 * window - 1) + relative[..., 1], persistent=False
        )
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x [B*nW, N, C], mask [nW, N, N] additive or None -> [B*nW, N, C]."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        bias = bias.permute(2, 0, 1)  # [heads, N, N]
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias[None] + mask[:, None]).repeat(bw // nw, 1, 1, 1)  # [B*nW, heads, N, N]
        # softmax(q k^T / sqrt(head_dim) + bias): the fused kernel is ~2x faster on CPU than matmul + softmax
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B*nW, heads, N, head_dim]
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """(Shifted-)window attention + MLP, both pre-norm residual. Works on [B, H, W, C]."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, H, W, C]; shift_mask [nW, N, N] for the padded map (used only by shifted blocks)."""
        _, h, w, c = x.shape
        win = self.window
        y = F.pad(self.norm1(x), (0, 0, 0, (win - w % win) % win, 0, (win - h % win) % win))
        hp, wp = y.shape[1:3]
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, win), shift_mask if self.shift else None)
        y = window_reverse(y, win, hp, wp)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y[:, :h, :w]
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token: [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """`depth` blocks alternating plain / shifted windows, then (except the last stage) patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float, downsample: bool):
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList(
            [SwinBlock(dim, num_heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio) for i in range(depth)]
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, H, W, C] -> (stage output [B, H, W, C], input of the next stage)."""
        h, w = x.shape[1:3]
        win = self.window
        hp, wp = -(-h // win) * win, -(-w // win) * win
        mask = shifted_window_mask(hp, wp, win, win // 2, x.device).to(x.dtype) if len(self.blocks) > 1 else None
        for block in self.blocks:
            x = block(x, mask)
        return x, (self.downsample(x) if self.downsample is not None else x)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, ceil(H/p), ceil(W/p), C] (zero-padded to a multiple of the patch first)."""
        p = self.patch_size
        h, w = pixels.shape[-2:]
        pixels = F.pad(pixels, (0, (p - w % p) % p, 0, (p - h % p) % p))
        return self.norm(self.proj(pixels).permute(0, 2, 3, 1))


class SwinTransformer(nn.Module):
    """Returns the LayerNormed output of each stage in `config.out_indices` as [B, C_i, H_i, W_i]."""

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.out_indices = tuple(config.out_indices)
        self.patch_embed = PatchEmbed(config.patch_size, config.embed_dim)
        num_stages = len(config.depths)
        dims = [config.embed_dim * 2**i for i in range(num_stages)]
        self.layers = nn.ModuleList(
            SwinStage(dims[i], config.depths[i], config.num_heads[i], config.window_size, config.mlp_ratio,
                      downsample=i < num_stages - 1)
            for i in range(num_stages)
        )
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(dims[i]))

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """pixels [B, 3, H, W] -> per output stage [B, C_i, H/2^(i+2), W/2^(i+2)] (sizes rounded up)."""
        x = self.patch_embed(pixels)  # [B, H/4, W/4, C]
        outputs = []
        for i, stage in enumerate(self.layers):
            out, x = stage(x)
            if i in self.out_indices:
                outputs.append(getattr(self, f"norm{i}")(out).permute(0, 3, 1, 2).contiguous())
        return outputs

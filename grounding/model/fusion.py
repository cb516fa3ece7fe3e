"""Image <-> text fusion of the feature enhancer (official `BiAttentionBlock`).

Both modalities are layer-normed, attend to each other through one shared logit matrix, and are updated
with layer-scale gammas. Official quirks kept exactly: the residual is added to the *normalised* inputs,
the global maximum of the logits is subtracted and the logits are clamped to +-50000 before both softmaxes,
and the text-side logits additionally subtract their per-row maximum (and are clamped again).

The products are re-associated so that image tokens never get projected to `fusion_dim` (1024): with T
text tokens and H heads the image side costs O(N * H * T * d) instead of O(N * d * 1024). This is exact up
to float re-association:
- logits_h = (v W_v,h^T + b_v,h) k_h^T = v (W_v,h^T k_h^T) + b_v,h k_h^T  (v_proj folded into the keys),
- softmax_h(v-side) @ values_l,h @ W_out_v,h^T  (out_v_proj folded into the per-head text values),
- P_h @ (v W_vv,h^T + b_vv,h) = (P_h @ v) W_vv,h^T + b_vv,h  (rows of P sum to 1).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

LOGIT_CLAMP = 50000.0


class BiMultiHeadAttention(nn.Module):
    """Bidirectional multi-head attention between N image tokens and T text tokens."""

    def __init__(self, vision_dim: int, text_dim: int, embed_dim: int, num_heads: int):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.v_proj = nn.Linear(vision_dim, embed_dim)
        self.l_proj = nn.Linear(text_dim, embed_dim)
        self.values_v_proj = nn.Linear(vision_dim, embed_dim)
        self.values_l_proj = nn.Linear(text_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, vision_dim)
        self.out_l_proj = nn.Linear(embed_dim, text_dim)
        for projection in (self.v_proj, self.l_proj, self.values_v_proj, self.values_l_proj, self.out_v_proj,
                           self.out_l_proj):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def _per_head_weight(self, linear: nn.Linear) -> Tensor:  # [H, hd, in]
        return linear.weight.view(self.num_heads, self.head_dim, -1)

    def forward(
        self,
        vision: Tensor,  # [B, N, dv] (layer-normed)
        text: Tensor,  # [B, T, dl] (layer-normed)
        vision_padding: Tensor | None = None,  # [B, N] bool, True = padding
        text_padding: Tensor | None = None,  # [B, T] bool, True = padding
    ) -> tuple[Tensor, Tensor]:  # delta_vision [B, N, dv], delta_text [B, T, dl]
        batch, num_text, _ = text.shape
        heads, head_dim = self.num_heads, self.head_dim

        keys = self.l_proj(text).view(batch, num_text, heads, head_dim)  # [B, T, H, hd]
        # v_proj folded into the keys: [B, dv, H*T] and its bias term [B, 1, H*T]
        folded_keys = torch.einsum("hed,bthe->bdht", self._per_head_weight(self.v_proj), keys)
        folded_keys = (folded_keys * self.scale).reshape(batch, -1, heads * num_text)
        key_bias = torch.einsum("he,bthe->bht", self.v_proj.bias.view(heads, head_dim), keys)
        key_bias = (key_bias * self.scale).reshape(batch, 1, heads * num_text)
        logits = torch.baddbmm(key_bias, vision, folded_keys)  # [B, N, H*T]

        logits = logits - logits.max()
        logits = logits.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)

        # text -> image: softmax over image tokens, per (head, text token)
        text_logits = logits.transpose(1, 2)  # [B, H*T, N]
        text_logits = text_logits - text_logits.max(dim=-1, keepdim=True).values
        text_logits = text_logits.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
        if vision_padding is not None:
            text_logits = text_logits.masked_fill(vision_padding[:, None, :], float("-inf"))
        text_probs = text_logits.softmax(dim=-1)
        pooled_vision = torch.bmm(text_probs, vision).view(batch, heads, num_text, -1)  # [B, H, T, dv]
        text_values = torch.einsum("bhtd,hed->bthe", pooled_vision, self._per_head_weight(self.values_v_proj))
        text_values = text_values.reshape(batch, num_text, -1) + self.values_v_proj.bias  # [B, T, E]
        delta_text = self.out_l_proj(text_values)

        # image -> text: softmax over text tokens, per head
        vision_logits = logits.view(batch, -1, heads, num_text)  # [B, N, H, T]
        if text_padding is not None:
            vision_logits = vision_logits.masked_fill(text_padding[:, None, None, :], float("-inf"))
        vision_probs = vision_logits.softmax(dim=-1).view(batch, -1, heads * num_text)
        values = self.values_l_proj(text).view(batch, num_text, heads, head_dim)  # [B, T, H, hd]
        out_weight = self.out_v_proj.weight.view(-1, heads, head_dim)  # [dv, H, hd]
        folded_values = torch.einsum("bthe,dhe->bhtd", values, out_weight).reshape(batch, heads * num_text, -1)
        delta_vision = torch.baddbmm(self.out_v_proj.bias, vision_probs, folded_values)  # [B, N, dv]
        return delta_vision, delta_text


class BiAttentionBlock(nn.Module):
    """Pre-LN fusion block: returns (LN(v) + gamma_v * dv, LN(l) + gamma_l * dl)."""

    def __init__(self, d_model: int, embed_dim: int, num_heads: int, layer_norm_eps: float = 1e-5,
                 init_gamma: float = 1e-4):
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.layer_norm_l = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.attn = BiMultiHeadAttention(d_model, d_model, embed_dim, num_heads)
        self.gamma_v = nn.Parameter(torch.full((d_model,), init_gamma))
        self.gamma_l = nn.Parameter(torch.full((d_model,), init_gamma))

    def forward(
        self,
        vision: Tensor,  # [B, N, d]
        text: Tensor,  # [B, T, d]
        vision_padding: Tensor | None = None,  # [B, N] bool, True = padding
        text_padding: Tensor | None = None,  # [B, T] bool, True = padding
    ) -> tuple[Tensor, Tensor]:
        vision = self.layer_norm_v(vision)
        text = self.layer_norm_l(text)
        delta_vision, delta_text = self.attn(vision, text, vision_padding, text_padding)
        return vision + self.gamma_v * delta_vision, text + self.gamma_l * delta_text

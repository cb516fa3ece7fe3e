"""Model variants as dataclass configs.

`swint_ogc()` and `swinb_cogcoor()` are the two official checkpoints (arXiv 2303.05499, IDEA-Research
release); `mm_grounding_dino()` is the same architecture as MM-Grounding-DINO and LLMDet train it (mmdet's
detection head, arXiv 2401.02361 / 2501.18954) at the Swin-T, -B and -L sizes; `tiny()` is a small variant for
tests and the shipped demo model. A config round-trips through `asdict` / `from_dict`, so checkpoints written by
this repo carry their own config.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class SwinConfig:
    """Swin Transformer image backbone."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: float = 4.0
    out_indices: tuple[int, ...] = (1, 2, 3)  # stages fed to the detector (strides 8, 16, 32)

    @property
    def out_channels(self) -> list[int]:
        return [self.embed_dim * 2**i for i in self.out_indices]


@dataclass
class TextEncoderConfig:
    """BERT text backbone (bert-base-uncased for the official checkpoints)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0


@dataclass
class GroundingDINOConfig:
    swin: SwinConfig = field(default_factory=SwinConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    d_model: int = 256
    num_queries: int = 900
    encoder_layers: int = 6
    decoder_layers: int = 6
    num_heads: int = 8  # deformable attention and decoder MHAs
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    text_enhancer_ffn_dim: int = 1024
    text_enhancer_heads: int = 4
    fusion_dim: int = 1024
    fusion_heads: int = 4
    num_feature_levels: int = 4
    encoder_n_points: int = 4
    decoder_n_points: int = 4
    max_text_len: int = 256
    image_pos_temperature: float = 20.0
    layer_norm_eps: float = 1e-5
    # Inverse sigmoid of box refinement. "ratio": log(max(x, eps) / max(1 - x, eps)), the original code's and
    # mmdet's; "logit": torch.special.logit's clamp of x to [eps, 1 - eps], transformers' (with eps 1e-5). They
    # differ only for degenerate reference boxes (a coordinate outside (eps, 1 - eps)).
    inverse_sigmoid_eps: float = 1e-3
    inverse_sigmoid_form: str = "ratio"
    # mmdet's head (MM-Grounding-DINO, LLMDet): logits = queries . text / sqrt(d) + a learnable bias per head,
    # and box / class heads that each decoder layer may own (the official model shares one box MLP).
    contrastive_bias: bool = False
    share_box_head: bool = True
    share_class_head: bool = True
    # (shortest side, longest side) of the resize the model was trained with: the detector's default resize.
    input_size: tuple[int, int] = (800, 1333)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GroundingDINOConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("swin"), dict):
            swin = dict(values["swin"])
            for key in ("depths", "num_heads", "out_indices"):
                if key in swin:
                    swin[key] = tuple(swin[key])
            values["swin"] = SwinConfig(**swin)
        if "input_size" in values:
            values["input_size"] = tuple(values["input_size"])
        if isinstance(values.get("text"), dict):
            values["text"] = TextEncoderConfig(**values["text"])
        return cls(**values)


def swint_ogc() -> GroundingDINOConfig:
    """groundingdino_swint_ogc.pth / IDEA-Research/grounding-dino-tiny."""
    return GroundingDINOConfig()


def swinb_cogcoor() -> GroundingDINOConfig:
    """groundingdino_swinb_cogcoor.pth / IDEA-Research/grounding-dino-base (Swin-B, window 12)."""
    return GroundingDINOConfig(
        swin=SwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12)
    )


MM_SWIN = {
    "tiny": SwinConfig(),
    "base": SwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12),
    "large": SwinConfig(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12,
                        out_indices=(0, 1, 2, 3)),
}


def mm_grounding_dino(size: str = "tiny") -> GroundingDINOConfig:
    """MM-Grounding-DINO / LLMDet at Swin-T, -B or -L ("tiny" | "base" | "large"): mmdet's head, one box and class
    head per decoder layer; the Large models read 5 feature levels, from Swin stages 1-4."""
    swin = MM_SWIN[size]
    return GroundingDINOConfig(
        swin=swin, num_feature_levels=len(swin.out_indices) + 1, contrastive_bias=True, share_box_head=False,
        share_class_head=False,
    )


def tiny() -> GroundingDINOConfig:
    """A few-MB variant for tests and the shipped demo model: same code paths, small dimensions."""
    return GroundingDINOConfig(
        swin=SwinConfig(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), window_size=4),
        text=TextEncoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        d_model=32,
        num_queries=30,
        encoder_layers=2,
        decoder_layers=2,
        num_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        text_enhancer_ffn_dim=32,
        text_enhancer_heads=2,
        fusion_dim=32,
        fusion_heads=2,
    )


def shapes() -> GroundingDINOConfig:
    """The shipped "shapes" demo detector (trained by `python -m grounding.train.demo_model` on 256 px scenes):
    a narrow model with every part of the real one, small enough to ship in assets/."""
    return GroundingDINOConfig(
        input_size=(256, 256),
        swin=SwinConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=8),
        text=TextEncoderConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
        d_model=64,
        num_queries=50,
        encoder_layers=3,
        decoder_layers=3,
        num_heads=4,
        encoder_ffn_dim=256,
        decoder_ffn_dim=256,
        text_enhancer_ffn_dim=128,
        text_enhancer_heads=2,
        fusion_dim=64,
        fusion_heads=2,
    )


PRESETS = {"swint_ogc": swint_ogc, "swinb_cogcoor": swinb_cogcoor, "tiny": tiny, "shapes": shapes}

"""Key maps between the official Grounding DINO checkpoint layout and transformers' GroundingDinoForObjectDetection
(and MMGroundingDinoForObjectDetection, the same layout plus mmdet's class-head biases).

`official_to_hf(sd)` and `hf_to_official(sd)` are pure: they rename keys and split / merge fused attention
projections, nothing else. Our `GroundingDINO.state_dict()` uses the official names, so these two maps
are all the HF safetensors (IDEA-Research/grounding-dino-tiny / -base) need.

HF layout = the file layout (what the hub files hold and `save_pretrained` writes, e.g.
`...conv_encoder.model.encoder.layers.0.blocks.0.attention.self.query.weight`). `hf_to_official` also
accepts the module names of transformers >= 5 (`...model.swin.encoder...attention.q_proj...`), which that
version renames on load. Aliases of the decoder heads (`bbox_embed.{i}`, `transformer.decoder.bbox_embed.{i}`,
and mmdet's `class_embed.{i}`, `transformer.decoder.class_embed.{i}`) are renamed one to one; `hf_to_official`
also restores the aliases that `save_pretrained` leaves out (it stores a shared head once, as `bbox_embed.0`,
and the decoder's aliases not at all).

Dropped, because they are recomputed or unused: Swin `relative_position_index`, BERT `position_ids` and
`token_type_ids` (buffers) and `pooler.*`, and transformers' final `swin.layernorm` (its SwinBackbone never
applies it). Keys no rule knows are passed through unchanged, so a loader can report them as unexpected.

`hf_config(cfg)` builds the equivalent `transformers.GroundingDinoConfig` (tests, checkpoint export).
"""
from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

import torch

from grounding.config import GroundingDINOConfig

if TYPE_CHECKING:
    import transformers

_SWIN = "model.backbone.conv_encoder.model."
_QKV = ("query", "key", "value")

# (official prefix, HF prefix); `{name}` stands for an integer index. The rest of the key is kept.
_RENAMES: list[tuple[str, str]] = [
    ("backbone.0.patch_embed.proj.", _SWIN + "embeddings.patch_embeddings.projection."),
    ("backbone.0.patch_embed.norm.", _SWIN + "embeddings.norm."),
    ("backbone.0.layers.{s}.blocks.{b}.norm1.", _SWIN + "encoder.layers.{s}.blocks.{b}.layernorm_before."),
    ("backbone.0.layers.{s}.blocks.{b}.norm2.", _SWIN + "encoder.layers.{s}.blocks.{b}.layernorm_after."),
    ("backbone.0.layers.{s}.blocks.{b}.attn.relative_position_bias_table",
     _SWIN + "encoder.layers.{s}.blocks.{b}.attention.self.relative_position_bias_table"),
    ("backbone.0.layers.{s}.blocks.{b}.attn.proj.", _SWIN + "encoder.layers.{s}.blocks.{b}.attention.output.dense."),
    ("backbone.0.layers.{s}.blocks.{b}.mlp.fc1.", _SWIN + "encoder.layers.{s}.blocks.{b}.intermediate.dense."),
    ("backbone.0.layers.{s}.blocks.{b}.mlp.fc2.", _SWIN + "encoder.layers.{s}.blocks.{b}.output.dense."),
    # Patch merging closes stage s in both layouts (timm would put it at the start of stage s+1).
    ("backbone.0.layers.{s}.downsample.", _SWIN + "encoder.layers.{s}.downsample."),
    # Official norm{k} normalises Swin stage k (0-based); HF names stages 1-based after the stem.
    *[(f"backbone.0.norm{k}.", _SWIN + f"hidden_states_norms.stage{k + 1}.") for k in range(8)],
    ("bert.", "model.text_backbone."),
    ("feat_map.", "model.text_projection."),
    ("input_proj.", "model.input_proj_vision."),
    ("transformer.level_embed", "model.level_embed"),
    ("transformer.tgt_embed.", "model.query_position_embeddings."),
    ("transformer.enc_output.", "model.enc_output."),
    ("transformer.enc_output_norm.", "model.enc_output_norm."),
    ("transformer.enc_out_bbox_embed.", "model.encoder_output_bbox_embed."),
    ("transformer.enc_out_class_embed.", "model.encoder_output_class_embed."),
    # Feature enhancer: deformable self-attention layer.
    ("transformer.encoder.layers.{i}.self_attn.", "model.encoder.layers.{i}.deformable_layer.self_attn."),
    ("transformer.encoder.layers.{i}.norm1.", "model.encoder.layers.{i}.deformable_layer.self_attn_layer_norm."),
    ("transformer.encoder.layers.{i}.linear1.", "model.encoder.layers.{i}.deformable_layer.fc1."),
    ("transformer.encoder.layers.{i}.linear2.", "model.encoder.layers.{i}.deformable_layer.fc2."),
    ("transformer.encoder.layers.{i}.norm2.", "model.encoder.layers.{i}.deformable_layer.final_layer_norm."),
    # Feature enhancer: text self-attention layer.
    ("transformer.encoder.text_layers.{i}.self_attn.out_proj.",
     "model.encoder.layers.{i}.text_enhancer_layer.self_attn.out_proj."),
    ("transformer.encoder.text_layers.{i}.linear1.", "model.encoder.layers.{i}.text_enhancer_layer.fc1."),
    ("transformer.encoder.text_layers.{i}.linear2.", "model.encoder.layers.{i}.text_enhancer_layer.fc2."),
    ("transformer.encoder.text_layers.{i}.norm1.", "model.encoder.layers.{i}.text_enhancer_layer.layer_norm_before."),
    ("transformer.encoder.text_layers.{i}.norm2.", "model.encoder.layers.{i}.text_enhancer_layer.layer_norm_after."),
    # Feature enhancer: image <-> text fusion (v = vision, l = language).
    ("transformer.encoder.fusion_layers.{i}.gamma_v", "model.encoder.layers.{i}.fusion_layer.vision_param"),
    ("transformer.encoder.fusion_layers.{i}.gamma_l", "model.encoder.layers.{i}.fusion_layer.text_param"),
    ("transformer.encoder.fusion_layers.{i}.layer_norm_v.", "model.encoder.layers.{i}.fusion_layer.layer_norm_vision."),
    ("transformer.encoder.fusion_layers.{i}.layer_norm_l.", "model.encoder.layers.{i}.fusion_layer.layer_norm_text."),
    *[
        (f"transformer.encoder.fusion_layers.{{i}}.attn.{ours}.", f"model.encoder.layers.{{i}}.fusion_layer.attn.{hf}.")
        for ours, hf in [
            ("v_proj", "vision_proj"), ("l_proj", "text_proj"), ("values_v_proj", "values_vision_proj"),
            ("values_l_proj", "values_text_proj"), ("out_v_proj", "out_vision_proj"), ("out_l_proj", "out_text_proj"),
        ]
    ],
    # Decoder layers.
    ("transformer.decoder.layers.{i}.cross_attn.", "model.decoder.layers.{i}.encoder_attn."),
    ("transformer.decoder.layers.{i}.norm1.", "model.decoder.layers.{i}.encoder_attn_layer_norm."),
    ("transformer.decoder.layers.{i}.ca_text.out_proj.", "model.decoder.layers.{i}.encoder_attn_text.out_proj."),
    ("transformer.decoder.layers.{i}.catext_norm.", "model.decoder.layers.{i}.encoder_attn_text_layer_norm."),
    ("transformer.decoder.layers.{i}.self_attn.out_proj.", "model.decoder.layers.{i}.self_attn.out_proj."),
    ("transformer.decoder.layers.{i}.norm2.", "model.decoder.layers.{i}.self_attn_layer_norm."),
    ("transformer.decoder.layers.{i}.linear1.", "model.decoder.layers.{i}.fc1."),
    ("transformer.decoder.layers.{i}.linear2.", "model.decoder.layers.{i}.fc2."),
    ("transformer.decoder.layers.{i}.norm3.", "model.decoder.layers.{i}.final_layer_norm."),
    ("transformer.decoder.norm.", "model.decoder.layer_norm."),
    ("transformer.decoder.ref_point_head.", "model.decoder.reference_points_head."),
    ("transformer.decoder.bbox_embed.", "model.decoder.bbox_embed."),
    ("transformer.decoder.class_embed.", "model.decoder.class_embed."),
    ("bbox_embed.", "bbox_embed."),
    ("class_embed.", "class_embed."),
]

# Fused q/k/v projections: official key (with `{p}` = weight|bias) <-> three HF keys (`{part}` = query|key|value).
_FUSED: list[tuple[str, str]] = [
    ("backbone.0.layers.{s}.blocks.{b}.attn.qkv.{p}",
     _SWIN + "encoder.layers.{s}.blocks.{b}.attention.self.{part}.{p}"),
    ("transformer.encoder.text_layers.{i}.self_attn.in_proj_{p}",
     "model.encoder.layers.{i}.text_enhancer_layer.self_attn.{part}.{p}"),
    ("transformer.decoder.layers.{i}.self_attn.in_proj_{p}", "model.decoder.layers.{i}.self_attn.{part}.{p}"),
    ("transformer.decoder.layers.{i}.ca_text.in_proj_{p}", "model.decoder.layers.{i}.encoder_attn_text.{part}.{p}"),
]

_OFFICIAL_IGNORED = re.compile(
    r"(.*\.relative_position_index$|bert\.embeddings\.(position|token_type)_ids$|bert\.pooler\.)"
)
_HF_IGNORED = re.compile(
    r"(.*\.relative_position_index$|model\.text_backbone\.embeddings\.(position|token_type)_ids$"
    r"|model\.text_backbone\.pooler\.|.*conv_encoder\.model\.(swin\.)?layernorm\.)"
)

# transformers >= 5 module names of the Swin backbone -> file names.
_HF_MODULE_TO_FILE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"conv_encoder\.model\.swin\.(encoder|embeddings)\."), r"conv_encoder.model.\1."),
    (re.compile(r"(blocks\.\d+)\.attention\.([qkv])_proj\."),
     lambda m: f"{m[1]}.attention.self.{dict(q='query', k='key', v='value')[m[2]]}."),
    (re.compile(r"(blocks\.\d+)\.attention\.relative_position_bias\.relative_position_bias_table"),
     r"\1.attention.self.relative_position_bias_table"),
    (re.compile(r"(blocks\.\d+)\.attention\.o_proj\."), r"\1.attention.output.dense."),
    (re.compile(r"(blocks\.\d+)\.mlp\.fc1\."), r"\1.intermediate.dense."),
    (re.compile(r"(blocks\.\d+)\.mlp\.fc2\."), r"\1.output.dense."),
]


def _pattern(template: str, prefix: bool) -> re.Pattern[str]:
    """'a.{i}.b.' -> regex with named integer groups; `{p}` matches weight|bias, `{part}` query|key|value."""
    parts = re.split(r"(\{\w+\})", template)
    groups = {"{p}": r"(?P<p>weight|bias)", "{part}": r"(?P<part>query|key|value)"}
    body = "".join(groups.get(x, rf"(?P<{x[1:-1]}>\d+)") if x.startswith("{") else re.escape(x) for x in parts)
    return re.compile("^" + body + ("" if prefix else "$"))


_RENAME_PATTERNS = [(_pattern(a, True), _pattern(b, True), a, b) for a, b in _RENAMES]
_FUSED_PATTERNS = [(_pattern(a, False), _pattern(b, False), a, b) for a, b in _FUSED]


def _rename(key: str, to_hf: bool) -> str | None:
    for official_re, hf_re, official, hf in _RENAME_PATTERNS:
        match = (official_re if to_hf else hf_re).match(key)
        if match:
            return (hf if to_hf else official).format(**match.groupdict()) + key[match.end():]
    return None


def official_to_hf(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official (and our) keys -> HF file keys; fused qkv / in_proj split row-wise into query, key, value."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if _OFFICIAL_IGNORED.match(key):
            continue
        for official_re, _, _, hf in _FUSED_PATTERNS:
            match = official_re.match(key)
            if match:
                for part, chunk in zip(_QKV, tensor.chunk(3, dim=0)):
                    out[hf.format(part=part, **match.groupdict())] = chunk
                break
        else:
            renamed = _rename(key, to_hf=True)
            out[key if renamed is None else renamed] = tensor
    return out


def hf_module_to_file_key(key: str) -> str:
    """transformers-5 module name -> HF file name (identity for keys outside the Swin backbone)."""
    for pattern, replacement in _HF_MODULE_TO_FILE:
        key = pattern.sub(replacement, key)
    return key


def hf_to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF keys (file or transformers-5 module names) -> official keys; query/key/value merged into qkv."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        if _HF_IGNORED.match(key):
            continue
        key = hf_module_to_file_key(key)
        for _, hf_re, official, _ in _FUSED_PATTERNS:
            match = hf_re.match(key)
            if match:
                groups = match.groupdict()
                part = groups.pop("part")
                fused.setdefault(official.format(**groups), {})[part] = tensor
                break
        else:
            renamed = _rename(key, to_hf=False)
            out[key if renamed is None else renamed] = tensor
    for key, parts in fused.items():
        if set(parts) != set(_QKV):
            raise ValueError(f"{key}: HF checkpoint has only {sorted(parts)} of query/key/value")
        out[key] = torch.cat([parts[p] for p in _QKV], dim=0)
    _fill_box_head_aliases(out)
    return out


def _fill_box_head_aliases(state_dict: dict[str, torch.Tensor]) -> None:
    """Every decoder head under every alias, as official checkpoints hold them: `save_pretrained` stores a head
    shared by the layers once (`bbox_embed.0`), per-layer heads once each, and the decoder's aliases
    (`transformer.decoder.bbox_embed.{i}`, `...class_embed.{i}`) not at all. A layer without its own head gets
    layer 0's (a shared head)."""
    layer = re.compile(r"^transformer\.decoder\.layers\.(\d+)\.")
    num_layers = 1 + max((int(m[1]) for k in state_dict if (m := layer.match(k))), default=-1)
    for head in ("bbox_embed", "class_embed"):
        alias = re.compile(rf"^(?:transformer\.decoder\.)?{head}\.(\d+)\.(.+)$")
        own: dict[int, dict[str, torch.Tensor]] = {}
        for key in sorted(state_dict):  # `{head}.i` sorts before `transformer.decoder.{head}.i`
            if (m := alias.match(key)):
                own.setdefault(int(m[1]), {}).setdefault(m[2], state_dict[key])
        for i in range(num_layers if own else 0):
            for rest, tensor in own.get(i, own.get(0, {})).items():
                state_dict.setdefault(f"{head}.{i}.{rest}", tensor)
                state_dict.setdefault(f"transformer.decoder.{head}.{i}.{rest}", tensor)


TRANSFORMERS_INVERSE_SIGMOID_EPS = 1e-5  # transformers' logit clamp in box refinement (official: 1e-3)


def as_transformers_port(config: GroundingDINOConfig) -> GroundingDINOConfig:
    """The config whose behaviour equals transformers' port of the same weights: its only behavioural
    difference from the original models is the inverse sigmoid of box refinement (a logit clamp at 1e-5)."""
    return dataclasses.replace(config, inverse_sigmoid_eps=TRANSFORMERS_INVERSE_SIGMOID_EPS, inverse_sigmoid_form="logit")


def hf_config(config: GroundingDINOConfig) -> "transformers.GroundingDinoConfig | transformers.MMGroundingDinoConfig":
    """The transformers config of the same architecture: MMGroundingDinoConfig for mmdet's head
    (`config.contrastive_bias`), else GroundingDinoConfig.

    transformers derives the text-enhancer and fusion sizes from the encoder ones (heads // 2, ffn // 2),
    so a config whose sizes break that rule has no transformers equivalent: ValueError.
    """
    from transformers import BertConfig, GroundingDinoConfig, MMGroundingDinoConfig, SwinConfig

    tied = {
        "text_enhancer_heads": config.num_heads // 2,
        "fusion_heads": config.num_heads // 2,
        "text_enhancer_ffn_dim": config.encoder_ffn_dim // 2,
        "fusion_dim": config.encoder_ffn_dim // 2,
    }
    for name, expected in tied.items():
        if getattr(config, name) != expected:
            raise ValueError(f"transformers needs {name} == {expected} for this config, got {getattr(config, name)}")
    if config.image_pos_temperature != int(config.image_pos_temperature):
        raise ValueError("transformers needs an integer image_pos_temperature")
    if not config.contrastive_bias and not (config.share_box_head and config.share_class_head):
        raise ValueError("transformers' GroundingDino shares one box head between the decoder layers")
    swin, text = config.swin, config.text
    if config.contrastive_bias:
        kind = MMGroundingDinoConfig
        head = {"decoder_bbox_embed_share": config.share_box_head, "decoder_cls_embed_share": config.share_class_head}
    else:
        kind, head = GroundingDinoConfig, {}
    return kind(
        **head,
        backbone_config=SwinConfig(
            embed_dim=swin.embed_dim,
            depths=list(swin.depths),
            num_heads=list(swin.num_heads),
            window_size=swin.window_size,
            patch_size=swin.patch_size,
            mlp_ratio=swin.mlp_ratio,
            out_indices=[i + 1 for i in swin.out_indices],
            drop_path_rate=0.0,
        ),
        text_config=BertConfig(
            vocab_size=text.vocab_size,
            hidden_size=text.hidden_size,
            num_hidden_layers=text.num_hidden_layers,
            num_attention_heads=text.num_attention_heads,
            intermediate_size=text.intermediate_size,
            max_position_embeddings=text.max_position_embeddings,
            type_vocab_size=text.type_vocab_size,
            layer_norm_eps=text.layer_norm_eps,
            pad_token_id=text.pad_token_id,
        ),
        d_model=config.d_model,
        num_queries=config.num_queries,
        encoder_layers=config.encoder_layers,
        decoder_layers=config.decoder_layers,
        encoder_attention_heads=config.num_heads,
        decoder_attention_heads=config.num_heads,
        encoder_ffn_dim=config.encoder_ffn_dim,
        decoder_ffn_dim=config.decoder_ffn_dim,
        num_feature_levels=config.num_feature_levels,
        encoder_n_points=config.encoder_n_points,
        decoder_n_points=config.decoder_n_points,
        max_text_len=config.max_text_len,
        positional_embedding_temperature=int(config.image_pos_temperature),
        layer_norm_eps=config.layer_norm_eps,
        dropout=0.0,
        fusion_droppath=0.0,
    )

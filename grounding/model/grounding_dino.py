"""Grounding DINO (arXiv 2303.05499): image features + caption tokens -> 900 boxes with per-token logits.

    pixels --(backbone, input_proj: image_encoder.py)--> ImageFeatures   (cacheable, text independent)
    input_ids --(bert + sub-sentence masks: text_encoder.py, feat_map)--> text [B, T, d]
    transformer: flatten levels -> FeatureEnhancer (encoder.py) -> select_queries (query_selection.py)
                 -> Decoder (decoder.py) -> contrastive logits + box MLP per decoder layer

Module attribute names reproduce the official checkpoint keys (`backbone.0.*`, `bert.*`, `feat_map.*`,
`input_proj.*`, `transformer.*`, `bbox_embed.*`); the box MLPs appear as `bbox_embed.{i}` and as
`transformer.decoder.bbox_embed.{i}`, as in the official model (one MLP under every index there). mmdet's
models (`config.contrastive_bias`: MM-Grounding-DINO, LLMDet) add the class heads' biases, under
`class_embed.{i}`, `transformer.decoder.class_embed.{i}` and `transformer.enc_out_class_embed`, and may own a
box and class head per decoder layer (`config.share_box_head` / `share_class_head`).

The inverse sigmoid of box refinement follows `config.inverse_sigmoid_form` / `inverse_sigmoid_eps`: the
original's log(max(x, 1e-3) / max(1 - x, 1e-3)) by default; the parity tests against transformers use its
logit clamp at 1e-5 (`keymap.as_transformers_port`). With random weights degenerate boxes occur and the two
then differ (0.037 max logit diff on the tiny config).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from grounding.config import GroundingDINOConfig
from grounding.model.decoder import MLP, ContrastiveHead, Decoder, full_precision, inverse_sigmoid
from grounding.model.encoder import FeatureEnhancer, MultiScaleDeformableAttention
from grounding.model.image_encoder import ImageFeatures, build_backbone, build_input_proj, encode_image_features
from grounding.model.query_selection import select_queries
from grounding.model.text_encoder import build_bert, run_bert, sub_sentence_masks


@dataclass
class GroundingOutput:
    pred_logits: Tensor  # [B, Q, max_text_len], -inf beyond the valid tokens
    pred_boxes: Tensor  # [B, Q, 4] cxcywh in [0, 1] of the unpadded image
    aux_outputs: list[dict[str, Tensor]] = field(default_factory=list)  # decoder layers 0..n-2
    enc_outputs: dict[str, Tensor] = field(default_factory=dict)  # query-selection proposals
    text_token_mask: Tensor | None = None  # [B, T] bool, True = real token


@dataclass
class FlatImage:
    """Image features of all levels flattened to one token sequence (what the transformer consumes)."""

    src: Tensor  # [B, N, d]
    pos: Tensor  # [B, N, d] sine position + level embedding
    padding: Tensor  # [B, N] bool, True = padding
    spatial_shapes: Tensor  # [L, 2] int64 (H, W)
    shapes: list[tuple[int, int]]
    level_start_index: Tensor  # [L] int64
    valid_ratios: Tensor  # [B, L, 2] (w, h)


def valid_ratios(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """mask [B, H, W] bool True=padding -> [B, 2] (valid width / W, valid height / H)."""
    _, height, width = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).to(dtype) / height
    valid_w = (~mask[:, 0, :]).sum(1).to(dtype) / width
    return torch.stack([valid_w, valid_h], -1)


class GroundingTransformer(nn.Module):
    """Keys: `level_embed`, `encoder.*`, `decoder.*`, `tgt_embed`, `enc_output`, `enc_output_norm`,
    `enc_out_bbox_embed`, `enc_out_class_embed` (official `transformer.*`; the last holds weights only in mmdet's
    models)."""

    def __init__(self, config: GroundingDINOConfig):
        super().__init__()
        d = config.d_model
        self.config = config
        self.level_embed = nn.Parameter(torch.zeros(config.num_feature_levels, d))
        self._level_index_cache: dict[tuple, tuple[Tensor, Tensor]] = {}  # see level_index
        self.encoder = FeatureEnhancer(
            config.encoder_layers, d, config.encoder_ffn_dim, config.num_heads, config.num_feature_levels,
            config.encoder_n_points, config.text_enhancer_ffn_dim, config.text_enhancer_heads, config.fusion_dim,
            config.fusion_heads, config.layer_norm_eps,
        )
        self.decoder = Decoder(
            config.decoder_layers, d, config.decoder_ffn_dim, config.num_heads, config.num_feature_levels,
            config.decoder_n_points, config.layer_norm_eps, config.inverse_sigmoid_eps, config.inverse_sigmoid_form,
        )
        self.tgt_embed = nn.Embedding(config.num_queries, d)
        self.enc_output = nn.Linear(d, d)
        self.enc_output_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.enc_out_bbox_embed = MLP(d, d, 4, 3)
        self.enc_out_class_embed = ContrastiveHead(config.max_text_len, with_bias=config.contrastive_bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init (used when training from scratch; checkpoints overwrite it): xavier for every
        matrix, then the deformable attention's own init, normal level and content embeddings."""
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.reset_parameters()
        if self.enc_out_class_embed.bias is not None:
            nn.init.constant_(self.enc_out_class_embed.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.normal_(self.level_embed)
        nn.init.normal_(self.tgt_embed.weight)

    def level_index(self, shapes: list[tuple[int, int]], device: torch.device) -> tuple[Tensor, Tensor]:
        """spatial_shapes [L, 2] and level_start_index [L] (int64 on `device`) for these level sizes.

        Cached per (sizes, device): a forward then copies nothing from host to device, which CUDA-graph
        capture requires and which saves a synchronising copy per forward."""
        key = (tuple(shapes), str(device))
        if key not in self._level_index_cache:
            # Ordinary tensors even under inference mode: a later training forward saves them for backward.
            with torch.inference_mode(False):
                spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=device)
                starts = torch.cat((spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]))
            self._level_index_cache[key] = (spatial_shapes, starts)
        return self._level_index_cache[key]

    def flatten(self, image: ImageFeatures) -> FlatImage:
        src, pos, padding, shapes = [], [], [], []
        for level, (feature, mask, level_pos) in enumerate(zip(image.features, image.masks, image.pos)):
            shapes.append((feature.shape[-2], feature.shape[-1]))
            src.append(feature.flatten(2).transpose(1, 2))  # [B, H*W, d]
            pos.append(level_pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1))
            padding.append(mask.flatten(1))
        spatial_shapes, level_start_index = self.level_index(shapes, image.features[0].device)
        # fp32 under autocast too: reference points and sampling grids derive from these ratios
        dtype = torch.promote_types(image.features[0].dtype, torch.float32)
        ratios = torch.stack([valid_ratios(m, dtype) for m in image.masks], 1)  # [B, L, 2]
        return FlatImage(torch.cat(src, 1), torch.cat(pos, 1), torch.cat(padding, 1), spatial_shapes, shapes,
                         level_start_index, ratios)

    def forward(
        self,
        image: ImageFeatures,
        text: Tensor,  # [B, T, d]
        text_token_mask: Tensor,  # [B, T] bool, True = real token
        block_mask: Tensor,  # [B, T, T] bool
        position_ids: Tensor,  # [B, T]
    ):
        """Returns (normed decoder outputs per layer, reference boxes per layer, enhanced text, selection)."""
        flat = self.flatten(image)
        text_padding = ~text_token_mask
        memory, text = self.encoder(
            flat.src, flat.pos, flat.padding, flat.spatial_shapes, flat.level_start_index, flat.valid_ratios,
            text, text_padding, block_mask, position_ids, flat.shapes,
        )
        selection = select_queries(
            memory, flat.padding, flat.shapes, text, text_token_mask, self.enc_output, self.enc_output_norm,
            self.enc_out_bbox_embed, self.enc_out_class_embed, self.config.num_queries,
        )
        tgt = self.tgt_embed.weight[None].expand(memory.shape[0], -1, -1)  # [B, Q, d]
        outputs, references = self.decoder(
            tgt, selection.reference_points, memory, flat.padding, flat.spatial_shapes, flat.level_start_index,
            flat.valid_ratios, text, text_padding,
        )
        return outputs, references, text, selection


def box_mlp(d_model: int) -> MLP:
    """A decoder box head; its last layer starts at zero, so refinement starts as the identity (official init)."""
    head = MLP(d_model, d_model, 4, 3)
    nn.init.zeros_(head.layers[-1].weight)
    nn.init.zeros_(head.layers[-1].bias)
    return head


def per_layer(num_layers: int, shared: bool, build) -> nn.ModuleList:
    """One head per decoder layer: the same module under every index when `shared`, else a new one each."""
    return nn.ModuleList([build()] * num_layers if shared else [build() for _ in range(num_layers)])


class GroundingDINO(nn.Module):
    """The full detector. `state_dict()` keys equal the official checkpoint keys, except these (regexes),
    which official checkpoints may carry but this module recomputes or does not have."""

    IGNORED_CHECKPOINT_KEYS = (
        r"^bert\.pooler\.",
        r"^bert\.embeddings\.position_ids$",
        r"^bert\.embeddings\.token_type_ids$",
        r"\.relative_position_index$",
    )

    def __init__(self, config: GroundingDINOConfig):
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config)
        self.input_proj = build_input_proj(config)
        for projection in self.input_proj:  # official init of the conv of every level
            nn.init.xavier_uniform_(projection[0].weight)
            nn.init.zeros_(projection[0].bias)
        self.bert = build_bert(config.text)
        self.feat_map = nn.Linear(config.text.hidden_size, config.d_model)
        nn.init.xavier_uniform_(self.feat_map.weight)
        nn.init.zeros_(self.feat_map.bias)
        self.transformer = GroundingTransformer(config)
        self.bbox_embed = per_layer(config.decoder_layers, config.share_box_head, lambda: box_mlp(config.d_model))
        self.class_embed = per_layer(
            config.decoder_layers, config.share_class_head,
            lambda: ContrastiveHead(config.max_text_len, with_bias=config.contrastive_bias),
        )
        self.transformer.decoder.bbox_embed = self.bbox_embed
        self.transformer.decoder.class_embed = self.class_embed

    def encode_image(self, pixel_values: Tensor, pixel_mask: Tensor | None = None) -> ImageFeatures:
        """pixel_values [B, 3, H, W] normalised, pixel_mask [B, H, W] bool True = valid (default all valid)."""
        if pixel_mask is None:
            pixel_mask = torch.ones(pixel_values.shape[:1] + pixel_values.shape[2:], dtype=torch.bool,
                                    device=pixel_values.device)
        return encode_image_features(self.backbone, self.input_proj, pixel_values, pixel_mask.bool(), self.config)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """input_ids, attention_mask [B, T] -> text features [B, T, d], block mask [B, T, T], position ids [B, T]."""
        if input_ids.shape[1] > self.config.max_text_len:
            raise ValueError(
                f"{input_ids.shape[1]} text tokens exceed the model's limit of {self.config.max_text_len}; "
                "split the caption into chunks (grounding.text.chunk_caption)"
            )
        block_mask, position_ids = sub_sentence_masks(input_ids, attention_mask)
        hidden = run_bert(self.bert, input_ids, block_mask, position_ids)
        return self.feat_map(hidden), block_mask, position_ids

    def forward(
        self,
        input_ids: Tensor,  # [B, T] int64
        attention_mask: Tensor,  # [B, T], 1/True = real token
        image_features: ImageFeatures | None = None,
        pixel_values: Tensor | None = None,  # [B, 3, H, W]
        pixel_mask: Tensor | None = None,  # [B, H, W] bool True = valid
    ) -> GroundingOutput:
        """Either `image_features` (from `encode_image`) or `pixel_values` must be given. Image features of
        batch 1 are shared by every caption of a larger text batch."""
        if image_features is None:
            if pixel_values is None:
                raise ValueError("pass image_features or pixel_values")
            image_features = self.encode_image(pixel_values, pixel_mask)
        text, block_mask, position_ids = self.encode_text(input_ids, attention_mask)
        text_token_mask = attention_mask.bool()
        batch = input_ids.shape[0]
        image_batch = image_features.features[0].shape[0]
        if image_batch != batch:
            if image_batch != 1:
                raise ValueError(f"image batch {image_batch} does not match text batch {batch}")
            image_features = ImageFeatures(
                features=[t.expand(batch, -1, -1, -1) for t in image_features.features],
                masks=[t.expand(batch, -1, -1) for t in image_features.masks],
                pos=[t.expand(batch, -1, -1, -1) for t in image_features.pos],
            )

        outputs, references, text, selection = self.transformer(
            image_features, text, text_token_mask, block_mask, position_ids
        )
        eps, form = self.config.inverse_sigmoid_eps, self.config.inverse_sigmoid_form
        layers = []
        for hidden, reference, box_head, class_head in zip(outputs, references, self.bbox_embed, self.class_embed):
            layers.append({
                "pred_logits": class_head(hidden, text, text_token_mask),
                "pred_boxes": (full_precision(box_head(hidden)) + inverse_sigmoid(reference, eps, form)).sigmoid(),
            })
        return GroundingOutput(
            pred_logits=layers[-1]["pred_logits"],
            pred_boxes=layers[-1]["pred_boxes"],
            aux_outputs=layers[:-1],
            enc_outputs={"pred_logits": selection.enc_logits, "pred_boxes": selection.enc_boxes},
            text_token_mask=text_token_mask,
        )

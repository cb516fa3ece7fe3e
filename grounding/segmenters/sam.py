"""SAM (Kirillov et al. 2023) as a box -> mask stage, with the `segment-anything` package.

Variants are small dataclass configs in one registry (`SAM_VARIANTS`): the three official ones (`vit_b`,
`vit_l`, `vit_h`, Kirillov et al. 2023) and `tiny`, a few-hundred-kB model built from the same
segment_anything modules for tests. Every variant is built by `build_sam` and loaded through one
state-dict path (`load_sam_checkpoint`), so the tiny model exercises the same code as the real ones.

The ViT's attention runs through `torch.nn.functional.scaled_dot_product_attention` (`SdpaAttention`, swapped in
after loading): the same numbers as the package's explicit softmax(q k^T + bias) v, without materialising the
whole attention matrix.

`SamSegmenter` splits SAM into its two halves so the pipeline can cache between them:
  - `encode_image(image) -> SamEmbedding`: the heavy ViT, once per image (the pipeline caches it);
  - `decode_boxes(embedding, boxes) -> SamMasks`: prompt encoder + mask decoder for ALL boxes of an
    image in one batched call (`transform.apply_boxes_torch` + `SamPredictor.predict_torch`).
The embedding is passed explicitly: each call builds its own short-lived `SamPredictor` bound to that
embedding, so concurrent requests never share a predictor's mutable image state.

Weights: `resolve_sam_checkpoint` looks at (1) an explicit path, (2) the env var `SAM_CHECKPOINT`,
(3) the cache dir (`$GROUNDING_CACHE_DIR/sam`, default `~/.cache/grounding/sam`), (4) downloads from
dl.fbaipublicfiles.com with a progress bar (unless offline: `GROUNDING_OFFLINE=1` or `HF_HUB_OFFLINE=1`).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from tqdm.auto import tqdm

from grounding.errors import CheckpointMismatchError, WeightsUnavailableError
from grounding.segmenters.base import DECODE_MEMORY_BUDGET, SamMasks, best_of, boxes_per_call, no_masks

SAM_CHECKPOINT_ENV = "SAM_CHECKPOINT"
CACHE_DIR_ENV = "GROUNDING_CACHE_DIR"
OFFLINE_ENVS = ("GROUNDING_OFFLINE", "HF_HUB_OFFLINE")
OFFICIAL_URL = "https://dl.fbaipublicfiles.com/segment_anything/{file_name}"


@dataclass(frozen=True)
class SamVariant:
    """Dimensions of one SAM model (the official builders' arguments, made explicit)."""

    name: str
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    file_name: str | None = None  # official release file; its 6-hex suffix is the md5 prefix

    @property
    def url(self) -> str | None:
        return OFFICIAL_URL.format(file_name=self.file_name) if self.file_name else None

    @property
    def md5_prefix(self) -> str | None:
        return Path(self.file_name).stem.rsplit("_", 1)[-1] if self.file_name else None


SAM_VARIANTS: dict[str, SamVariant] = {
    "vit_h": SamVariant("vit_h", 1280, 32, 16, (7, 15, 23, 31), file_name="sam_vit_h_4b8939.pth"),
    "vit_l": SamVariant("vit_l", 1024, 24, 16, (5, 11, 17, 23), file_name="sam_vit_l_0b3195.pth"),
    "vit_b": SamVariant("vit_b", 768, 12, 12, (2, 5, 8, 11), file_name="sam_vit_b_01ec64.pth"),
    # Tests only: same classes, 256 px input (16x16 embedding), 32-d prompts. No released weights.
    "tiny": SamVariant(
        "tiny", 32, 2, 2, (1,), img_size=256, window_size=4, prompt_embed_dim=32, decoder_mlp_dim=64,
        decoder_num_heads=2, iou_head_hidden_dim=32, mask_in_chans=4,
    ),
    # The shipped demo segmenter (grounding.train.demo_model): 256 px input, patch 8 (32x32 embedding, 128x128
    # low-res masks), 4 ViT blocks of width 96, 64-d prompts.
    "shapes": SamVariant(
        "shapes", 96, 4, 4, (1, 3), img_size=256, patch_size=8, window_size=8, prompt_embed_dim=64,
        decoder_mlp_dim=256, decoder_num_heads=4, iou_head_hidden_dim=64, mask_in_chans=8,
    ),
}


def default_sam_variant(device: torch.device | str) -> str:
    """vit_h where a GPU runs it in well under a second; vit_b on CPU (about 15 s vs 65 s per image)."""
    return "vit_h" if torch.device(device).type == "cuda" else "vit_b"


def build_sam(variant: SamVariant) -> Sam:
    """A randomly initialised `Sam` in eval mode whose state-dict keys equal the official checkpoint's."""
    embedding_size = variant.img_size // variant.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=variant.encoder_depth,
            embed_dim=variant.encoder_embed_dim,
            img_size=variant.img_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=variant.encoder_num_heads,
            patch_size=variant.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=variant.encoder_global_attn_indexes,
            window_size=variant.window_size,
            out_chans=variant.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=variant.prompt_embed_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(variant.img_size, variant.img_size),
            mask_in_chans=variant.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=variant.prompt_embed_dim,
                mlp_dim=variant.decoder_mlp_dim,
                num_heads=variant.decoder_num_heads,
            ),
            transformer_dim=variant.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=variant.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def load_sam_checkpoint(sam: Sam, path: str | Path) -> Sam:
    """Load an official-format SAM state dict (.pth) into `sam`; every key and shape must match."""
    try:
        state_dict = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise WeightsUnavailableError(f"SAM checkpoint not found: {path}") from err
    except Exception as err:  # pickle/zip errors: not a torch checkpoint at all
        raise CheckpointMismatchError(f"{path} is not a readable PyTorch checkpoint ({err})") from err
    if isinstance(state_dict, dict) and "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    expected = sam.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        raise CheckpointMismatchError(
            f"{path} does not fit SAM with image encoder width {sam.image_encoder.patch_embed.proj.out_channels}: "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
            f"{len(wrong_shape)} of other shape {wrong_shape[:3]}. Pass the variant that matches the file "
            f"(vit_b / vit_l / vit_h)."
        )
    sam.load_state_dict(state_dict)
    return sam


def sam_cache_dir() -> Path:
    """Where downloaded SAM checkpoints live: `$GROUNDING_CACHE_DIR/sam` or `~/.cache/grounding/sam`."""
    root = os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "grounding"
    return Path(root) / "sam"


def _offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"} for name in OFFLINE_ENVS)


def _how_to_pass_local(variant: str, file_name: str | None) -> str:
    name = file_name or f"<{variant} checkpoint>.pth"
    return (
        f"Download {name} yourself (from {OFFICIAL_URL.format(file_name=name)}) and pass it with "
        f"`sam_checkpoint=/path/{name}` (CLI: `--sam-checkpoint`), or set {SAM_CHECKPOINT_ENV}=/path/{name}, "
        f"or put it in {sam_cache_dir()}."
    )


def download_checkpoint(url: str, destination: Path, md5_prefix: str | None = None, timeout: float = 30.0) -> Path:
    """Download `url` to `destination` with a tqdm progress bar, atomically (temp file + rename).

    The official SAM file names end in the first 6 hex digits of their md5; a mismatch deletes the file.
    Network errors raise `WeightsUnavailableError`.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5()
    fd, tmp_name = tempfile.mkstemp(dir=destination.parent, prefix=destination.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=destination.name) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if md5_prefix and not digest.hexdigest().startswith(md5_prefix):
            raise WeightsUnavailableError(
                f"{url} downloaded with md5 {digest.hexdigest()[:12]}..., expected {md5_prefix}...: the file is "
                f"damaged or not the official one. Nothing was saved; try again or pass a local file."
            )
        os.replace(tmp_name, destination)
    except (urllib.error.URLError, OSError) as err:
        raise WeightsUnavailableError(f"Could not download {url}: {err}") from err
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return destination


def resolve_sam_checkpoint(variant: str, checkpoint: str | Path | None = None, download: bool = True) -> Path:
    """Local path of the weights of `variant`: argument, then `$SAM_CHECKPOINT`, then cache, then download."""
    spec = _variant(variant)
    explicit = checkpoint or os.environ.get(SAM_CHECKPOINT_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            source = "sam_checkpoint" if checkpoint else f"${SAM_CHECKPOINT_ENV}"
            raise WeightsUnavailableError(f"SAM checkpoint given by {source} does not exist: {path}")
        return path
    if spec.file_name is None:
        raise WeightsUnavailableError(
            f"SAM variant {variant!r} has no released weights; pass a local checkpoint file "
            f"(`sam_checkpoint=...` or ${SAM_CHECKPOINT_ENV})."
        )
    cached = sam_cache_dir() / spec.file_name
    if cached.is_file():
        return cached
    if not download or _offline():
        raise WeightsUnavailableError(
            f"SAM {variant} weights are not in the cache and downloading is off (offline mode). "
            + _how_to_pass_local(variant, spec.file_name)
        )
    try:
        return download_checkpoint(spec.url, cached, spec.md5_prefix)
    except WeightsUnavailableError as err:
        raise WeightsUnavailableError(f"{err}. " + _how_to_pass_local(variant, spec.file_name)) from err


def _variant(name: str) -> SamVariant:
    if name not in SAM_VARIANTS:
        raise WeightsUnavailableError(f"Unknown SAM variant {name!r}; choose one of {sorted(SAM_VARIANTS)}.")
    return SAM_VARIANTS[name]


@dataclass(frozen=True)
class SamEmbedding:
    """SAM's image embedding of one image: the cacheable, prompt-independent half."""

    features: torch.Tensor  # [1, C, E, E] C = prompt_embed_dim, E = img_size / 16
    input_size: tuple[int, int]  # (h, w) of the resized image inside the img_size x img_size input
    original_size: tuple[int, int]  # (H, W) of the image the masks are returned at

    @property
    def nbytes(self) -> int:
        return self.features.numel() * self.features.element_size()


class SdpaAttention(Attention):
    """segment-anything's ViT attention computed by scaled_dot_product_attention (its weights and interface).

    The decomposed relative-position bias (rel_h[q, row(k)] + rel_w[q, col(k)], from the package's `get_rel_pos`
    tables) goes in as SDPA's additive mask, built for `BIAS_BYTES` worth of queries at a time: SDPA's fused CPU
    kernel then replaces the explicit matmul + softmax + matmul (3.4x faster on a global vit_b block), and no
    full [heads, HW, HW] attention or bias matrix (805 MB per global block of vit_b at 1024 px) is ever held.
    """

    BIAS_BYTES = 64 * 2**20

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        tokens = height * width
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, batch * self.num_heads, tokens, -1).unbind(0)  # [B*heads, HW, d] each
        if not self.use_rel_pos:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            r_q = q.reshape(-1, height, width, q.shape[-1])
            rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(height, height, self.rel_pos_h))  # [., H, W, H]
            rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(width, width, self.rel_pos_w))  # [., H, W, W]
            rel_h, rel_w = rel_h.reshape(-1, tokens, height, 1), rel_w.reshape(-1, tokens, 1, width)
            rows = max(1, self.BIAS_BYTES // (q.shape[0] * tokens * q.element_size()))
            x = torch.cat([
                F.scaled_dot_product_attention(
                    q[:, start : start + rows], k, v,
                    attn_mask=(rel_h[:, start : start + rows] + rel_w[:, start : start + rows]).reshape(-1, min(rows, tokens - start), tokens),
                )
                for start in range(0, tokens, rows)
            ], 1)  # [B*heads, HW, d]
        x = x.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
        return self.proj(x)


def use_sdpa_attention(sam: Sam) -> Sam:
    """Swap every attention module of SAM's image encoder for `SdpaAttention` (same parameters, in place)."""
    for module in sam.image_encoder.modules():
        if type(module) is Attention:
            module.__class__ = SdpaAttention
    return sam


@dataclass
class SamSegmenter:
    """A loaded SAM, split into a cacheable image encoder and a batched box decoder. Thread-safe.

    `sdpa_attention` swaps the image encoder's attention for `SdpaAttention` (equal outputs, faster)."""

    model: Sam
    model_id: str  # cache key: variant and weights file
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    name: str = "SAM"  # what users see: the variant, never the weights' path
    sdpa_attention: bool = True

    def __post_init__(self) -> None:
        if self.sdpa_attention:
            use_sdpa_attention(self.model)

    @classmethod
    def from_pretrained(
        cls,
        variant: str | None = None,
        checkpoint: str | Path | None = None,
        device: str | torch.device | None = None,
        download: bool = True,
        sdpa_attention: bool = True,
    ) -> "SamSegmenter":
        """Load `variant` ("vit_b" | "vit_l" | "vit_h" | "tiny" | "shapes"; None = by device) from official weights.

        `checkpoint` (or `$SAM_CHECKPOINT`) is a local .pth that skips the download. `sdpa_attention=False`
        keeps the package's own attention (the reference the SDPA one is tested against).
        Raises WeightsUnavailableError / CheckpointMismatchError with what to do.
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        variant = variant or default_sam_variant(device)
        spec = _variant(variant)
        path = resolve_sam_checkpoint(variant, checkpoint, download=download)
        model = load_sam_checkpoint(build_sam(spec), path).to(device)
        return cls(model=model, model_id=f"sam-{variant}:{Path(path).resolve()}", device=device, name=f"SAM {variant}",
                   sdpa_attention=sdpa_attention)

    @torch.inference_mode()
    def encode_image(self, image: np.ndarray) -> SamEmbedding:
        """image [H, W, 3] uint8 RGB -> its embedding (resize long side to img_size, normalise, ViT)."""
        predictor = SamPredictor(self.model)
        predictor.set_image(image, image_format="RGB")
        return SamEmbedding(
            features=predictor.features.float(),  # fp32 whatever the encoder ran in: decoding stays fp32
            input_size=tuple(predictor.input_size),
            original_size=tuple(predictor.original_size),
        )

    @torch.inference_mode()
    def decode_boxes(
        self, embedding: SamEmbedding, boxes: np.ndarray, multimask: bool = False,
        memory_budget: int = DECODE_MEMORY_BUDGET,
    ) -> SamMasks:
        """boxes [N, 4] xyxy pixels of the original image -> N masks, in batched decoder calls.

        Usually ONE call; boxes are split into several calls only when the full-resolution float masks of
        one call would exceed `memory_budget` bytes (hundreds of boxes at a low threshold on a big image
        would otherwise exhaust memory). `multimask=True` asks SAM for its three candidate masks per box and
        keeps the one with the highest predicted IoU (helps with thin or ambiguous objects).
        """
        height, width = embedding.original_size
        if len(boxes) == 0:
            return no_masks(height, width)
        predictor = self._predictor(embedding)
        box_tensor = torch.as_tensor(np.asarray(boxes, np.float32), device=self.device)  # [N, 4]
        box_tensor = predictor.transform.apply_boxes_torch(box_tensor, embedding.original_size)
        masks, scores = [], []
        for chunk in box_tensor.split(boxes_per_call(height, width, 3 if multimask else 1, memory_budget)):
            chunk_masks, iou, _ = predictor.predict_torch(
                point_coords=None, point_labels=None, boxes=chunk, multimask_output=multimask
            )  # masks [n, K, H, W] bool, iou [n, K]; K = 3 with multimask else 1
            kept, kept_iou = best_of(chunk_masks, iou)
            masks.append(kept)
            scores.append(kept_iou)
        return SamMasks(masks=np.concatenate(masks), iou_scores=np.concatenate(scores))

    @torch.inference_mode()
    def decode_points(
        self, embedding: SamEmbedding, box: np.ndarray, points: np.ndarray, labels: np.ndarray, multimask: bool = False
    ) -> SamMasks:
        """box [4] xyxy px + points [P, 2] xy px, labels [P] (1 keep, 0 remove), original frame -> SamMasks with one
        mask (multimask=False) or SAM's three candidates in its order (True); P may be 0 (the box alone)."""
        predictor = self._predictor(embedding)
        size = embedding.original_size
        box_tensor = predictor.transform.apply_boxes_torch(torch.as_tensor(np.asarray(box, np.float32).reshape(1, 4), device=self.device), size)
        coords = labels_tensor = None
        if len(points):
            coords = predictor.transform.apply_coords_torch(
                torch.as_tensor(np.asarray(points, np.float32).reshape(1, -1, 2), device=self.device), size)  # [1, P, 2]
            labels_tensor = torch.as_tensor(np.asarray(labels).reshape(1, -1), dtype=torch.int, device=self.device)
        masks, iou, _ = predictor.predict_torch(coords, labels_tensor, boxes=box_tensor, multimask_output=multimask)
        return SamMasks(masks=masks[0].cpu().numpy(), iou_scores=iou[0].float().cpu().numpy())  # [K, H, W], [K]

    def _predictor(self, embedding: SamEmbedding) -> SamPredictor:
        """A predictor of its own for one call, bound to the cached embedding (no state shared between requests)."""
        predictor = SamPredictor(self.model)
        predictor.features = embedding.features.to(self.device)
        predictor.input_size = embedding.input_size
        predictor.original_size = embedding.original_size
        predictor.is_image_set = True
        return predictor

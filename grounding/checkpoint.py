"""Grounding DINO weights: find them (local path, env var, Hugging Face hub), read them, load them strictly.

Formats, all read into our `GroundingDINO` (whose `state_dict()` uses the official key names):
- official `.pth` (`groundingdino_swint_ogc.pth`, `groundingdino_swinb_cogcoor.pth`): `{"model": state_dict}`,
  keys optionally prefixed by "module."; Swin-T vs Swin-B is read from the patch-embedding width;
- ours: the official layout plus `"config": GroundingDINOConfig.to_dict()`, so any size (tiny test models,
  trained models) loads through the same path (`save_checkpoint`);
- Hugging Face (`IDEA-Research/grounding-dino-tiny` / `-base`, and the MM-Grounding-DINO and LLMDet releases,
  which transformers publishes as `MMGroundingDinoForObjectDetection`): a folder with `config.json` and
  `model.safetensors`, keys mapped by `grounding.keymap.hf_to_official` (`save_hf_checkpoint` writes it). Whether
  the decoder layers own their box and class heads is read from the tensors the file holds.

Loading is strict: a key the model lacks or a model key the file lacks raises CheckpointMismatchError naming
them; only `GroundingDINO.IGNORED_CHECKPOINT_KEYS` (buffers the model recomputes) are skipped.
Files are read with `torch.load(weights_only=True)`; nothing in them is executed.

Where weights come from (`resolve_checkpoint`): an existing local path given as the name; else the file named by
the env var GROUNDING_DINO_CHECKPOINT; else the hub (`hf_hub_download`: HF cache, progress bars, HF_HUB_OFFLINE
honoured). When the hub cannot deliver, WeightsUnavailableError says how to pass a local file.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from grounding.config import GroundingDINOConfig, SwinConfig, TextEncoderConfig, swinb_cogcoor, swint_ogc
from grounding.errors import CheckpointMismatchError, WeightsUnavailableError
from grounding.keymap import hf_config, hf_to_official, official_to_hf
from grounding.model import GroundingDINO

CHECKPOINT_ENV = "GROUNDING_DINO_CHECKPOINT"
HF_CONFIG_FILE = "config.json"
HF_WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class HubWeights:
    """Where a named model lives on the Hugging Face hub."""

    repo_id: str
    filenames: tuple[str, ...]  # one .pth, or config.json + model.safetensors

    @property
    def urls(self) -> list[str]:
        return [f"https://huggingface.co/{self.repo_id}/resolve/main/{name}" for name in self.filenames]


def _hf(repo_id: str) -> HubWeights:
    return HubWeights(repo_id, (HF_CONFIG_FILE, HF_WEIGHTS_FILE))


_MM = "openmmlab-community/mm_grounding_dino_"
# Short name -> hub weights. Every open detector of this architecture worth loading (README "Detectors").
KNOWN_WEIGHTS: dict[str, HubWeights] = {
    "swint_ogc": HubWeights("ShilongLiu/GroundingDINO", ("groundingdino_swint_ogc.pth",)),
    "swinb_cogcoor": HubWeights("ShilongLiu/GroundingDINO", ("groundingdino_swinb_cogcoor.pth",)),
    **{repo: _hf(repo) for repo in ("IDEA-Research/grounding-dino-tiny", "IDEA-Research/grounding-dino-base")},
    "mm_grounding_dino_tiny": _hf(_MM + "tiny_o365v1_goldg_v3det"),
    "mm_grounding_dino_base": _hf(_MM + "base_o365v1_goldg_v3det"),
    "mm_grounding_dino_large": _hf(_MM + "large_o365v2_oiv6_goldg"),
    **{f"mm_grounding_dino_{variant}": _hf(_MM + variant) for variant in (
        "tiny_o365v1_goldg", "tiny_o365v1_goldg_grit", "tiny_o365v1_goldg_v3det", "tiny_o365v1_goldg_grit_v3det",
        "base_o365v1_goldg_v3det", "base_all", "large_o365v2_oiv6_goldg", "large_all",
    )},
    **{f"llmdet_{size}": _hf(f"iSEE-Laboratory/llmdet_{size}") for size in ("tiny", "base", "large")},
}
KNOWN_WEIGHTS.update({hub.repo_id: hub for hub in list(KNOWN_WEIGHTS.values()) if hub.filenames[0] == HF_CONFIG_FILE})

# Swin patch-embedding width -> official preset (the two released backbones differ in it).
_PRESET_BY_EMBED_DIM = {96: swint_ogc, 128: swinb_cogcoor}


@dataclass
class LoadReport:
    """What happened when a checkpoint was loaded (empty `missing`/`unexpected` after a successful load)."""

    source: str
    format: str  # "official" | "ours" | "hf"
    config_origin: str  # where the architecture came from
    loaded: int = 0  # tensors copied into the model
    ignored: list[str] = field(default_factory=list)  # recomputed buffers present in the file
    missing: list[str] = field(default_factory=list)  # model keys the file lacks
    unexpected: list[str] = field(default_factory=list)  # file keys the model lacks
    mismatched: list[str] = field(default_factory=list)  # "key: file shape vs model shape"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [
            f"{self.source} ({self.format}, architecture from {self.config_origin}): "
            f"{self.loaded} tensors loaded, {len(self.ignored)} ignored"
        ]
        problems = (("missing", self.missing), ("unexpected", self.unexpected), ("shape mismatch", self.mismatched))
        for title, keys in problems:
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys) - 20} more)" if len(keys) > 20 else "")
                lines.append(f"  {len(keys)} {title}: {shown}")
        return "\n".join(lines)


@dataclass
class Checkpoint:
    """A checkpoint read from disk: state dict in official key layout + the architecture it was made for."""

    state_dict: dict[str, torch.Tensor]
    config: GroundingDINOConfig
    format: str
    config_origin: str
    source: str


# ---------------------------------------------------------------------------------------------- reading


def read_checkpoint(path: str | os.PathLike, config: GroundingDINOConfig | None = None) -> Checkpoint:
    """Read a .pth (official or ours), a .safetensors file or an HF folder into the official key layout.

    `config` overrides the architecture stored in / inferred from the file.
    """
    path = Path(path)
    if path.is_dir():
        if (path / HF_WEIGHTS_FILE).is_file():
            return _read_hf(path / HF_WEIGHTS_FILE, config)
        candidates = sorted(path.glob("*.pth"))
        if len(candidates) == 1:
            return read_checkpoint(candidates[0], config)
        raise WeightsUnavailableError(
            f"{path} holds neither {HF_WEIGHTS_FILE} (+ {HF_CONFIG_FILE}) nor exactly one .pth file"
        )
    if not path.is_file():
        raise WeightsUnavailableError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        return _read_hf(path, config)
    return _read_pth(path, config)


def _read_pth(path: Path, config: GroundingDINOConfig | None) -> Checkpoint:
    try:
        # The official files were written by a training script; some carry its argparse.Namespace.
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise CheckpointMismatchError(
            f"{path} is not a readable PyTorch checkpoint of tensors ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(data, dict):
        raise CheckpointMismatchError(f"{path} holds a {type(data).__name__}, expected a dict with a 'model' key")
    state_dict = data.get("model", data)
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointMismatchError(f"{path}: 'model' is not a state dict of tensors")
    state_dict = {key.removeprefix("module."): tensor for key, tensor in state_dict.items()}
    stored = data.get("config")
    if config is not None:
        origin = "argument"
    elif isinstance(stored, dict):
        config, origin = GroundingDINOConfig.from_dict(stored), "checkpoint config"
    else:
        config, origin = infer_config(state_dict, path.name), "tensor shapes"
    return Checkpoint(state_dict, config, "ours" if isinstance(stored, dict) else "official", origin, str(path))


def _read_hf(weights: Path, config: GroundingDINOConfig | None) -> Checkpoint:
    try:
        raw = load_file(weights)
    except Exception as error:  # safetensors raises its own SafetensorError
        raise CheckpointMismatchError(f"{weights} is not a readable safetensors file ({error})") from error
    try:
        state_dict = hf_to_official(raw)
    except ValueError as error:
        raise CheckpointMismatchError(f"{weights}: {error}") from error
    config_file = weights.parent / HF_CONFIG_FILE
    if config is not None:
        origin = "argument"
    elif config_file.is_file():
        config, origin = config_from_hf(json.loads(config_file.read_text())), str(config_file)
        if config.contrastive_bias:  # the file says whether the layers own their heads (see module docstring)
            config = dataclasses.replace(
                config, share_box_head=not _per_layer(raw, "bbox_embed"), share_class_head=not _per_layer(raw, "class_embed")
            )
    else:
        config, origin = infer_config(state_dict, weights.parent.name), "tensor shapes"
    return Checkpoint(state_dict, config, "hf", origin, str(weights))


def _per_layer(hf_state: dict[str, torch.Tensor], head: str) -> bool:
    """True if an HF file holds a head for a decoder layer after the first (`save_pretrained` writes a head shared
    by the layers once, as `{head}.0`)."""
    return any(re.match(rf"^{head}\.[1-9]\d*\.", key) for key in hf_state)


def infer_config(state_dict: dict[str, torch.Tensor], name: str = "") -> GroundingDINOConfig:
    """Official preset from the tensors: Swin patch embedding width 96 -> Swin-T OGC, 128 -> Swin-B."""
    weight = state_dict.get("backbone.0.patch_embed.proj.weight")
    embed_dim = None if weight is None else int(weight.shape[0])
    if embed_dim not in _PRESET_BY_EMBED_DIM:
        raise CheckpointMismatchError(
            f"cannot tell the architecture of {name or 'this checkpoint'}: it has no 'config' and its Swin patch "
            f"embedding width is {embed_dim} (official checkpoints: 96 = Swin-T, 128 = Swin-B). "
            "Save it with grounding.checkpoint.save_checkpoint, which stores the config."
        )
    return _PRESET_BY_EMBED_DIM[embed_dim]()


def config_from_hf(data: dict) -> GroundingDINOConfig:
    """transformers GroundingDinoConfig or MMGroundingDinoConfig (config.json contents) -> our config (inverse of
    `keymap.hf_config`)."""
    from transformers import GroundingDinoConfig, MMGroundingDinoConfig

    mm = data.get("model_type") == MMGroundingDinoConfig.model_type
    hf = (MMGroundingDinoConfig if mm else GroundingDinoConfig).from_dict(data)
    swin, text = hf.backbone_config, hf.text_config
    return GroundingDINOConfig(
        swin=SwinConfig(
            embed_dim=swin.embed_dim,
            depths=tuple(swin.depths),
            num_heads=tuple(swin.num_heads),
            window_size=swin.window_size,
            patch_size=swin.patch_size,
            mlp_ratio=swin.mlp_ratio,
            out_indices=tuple(i - 1 for i in swin.out_indices),  # HF counts the stem as stage 0
        ),
        text=TextEncoderConfig(
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
        d_model=hf.d_model,
        num_queries=hf.num_queries,
        encoder_layers=hf.encoder_layers,
        decoder_layers=hf.decoder_layers,
        num_heads=hf.encoder_attention_heads,
        encoder_ffn_dim=hf.encoder_ffn_dim,
        decoder_ffn_dim=hf.decoder_ffn_dim,
        # transformers ties the text enhancer and fusion sizes to the encoder's (see keymap.hf_config).
        text_enhancer_ffn_dim=hf.encoder_ffn_dim // 2,
        text_enhancer_heads=hf.encoder_attention_heads // 2,
        fusion_dim=hf.encoder_ffn_dim // 2,
        fusion_heads=hf.encoder_attention_heads // 2,
        num_feature_levels=hf.num_feature_levels,
        encoder_n_points=hf.encoder_n_points,
        decoder_n_points=hf.decoder_n_points,
        max_text_len=hf.max_text_len,
        image_pos_temperature=float(hf.positional_embedding_temperature),
        layer_norm_eps=hf.layer_norm_eps,
        contrastive_bias=mm,
        share_box_head=getattr(hf, "decoder_bbox_embed_share", True),
        share_class_head=getattr(hf, "decoder_cls_embed_share", True),
    )


# ---------------------------------------------------------------------------------------------- loading


def load_state_dict_strict(model: GroundingDINO, state_dict: dict[str, torch.Tensor], report: LoadReport) -> LoadReport:
    """Copy `state_dict` (official keys) into `model`; CheckpointMismatchError unless every key matches."""
    ignored = [re.compile(pattern) for pattern in model.IGNORED_CHECKPOINT_KEYS]

    def is_ignored(key: str) -> bool:
        return any(pattern.search(key) for pattern in ignored)

    expected = {key: value for key, value in model.state_dict().items() if not is_ignored(key)}
    report.ignored = sorted(key for key in state_dict if is_ignored(key))
    given = {key: value for key, value in state_dict.items() if not is_ignored(key)}
    report.missing = sorted(set(expected) - set(given))
    report.unexpected = sorted(set(given) - set(expected))
    report.mismatched = sorted(
        f"{key}: {tuple(given[key].shape)} vs {tuple(expected[key].shape)}"
        for key in set(given) & set(expected)
        if given[key].shape != expected[key].shape
    )
    if not report.ok:
        raise CheckpointMismatchError(f"checkpoint does not fit the model:\n{report}")
    model.load_state_dict(given, strict=False)
    report.loaded = len(given)
    return report


def load_model(
    name_or_path: str | os.PathLike,
    device: str | torch.device | None = None,
    config: GroundingDINOConfig | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[GroundingDINO, LoadReport]:
    """A known name, hub repo or local path -> (GroundingDINO in eval mode on `device`, LoadReport)."""
    path = resolve_checkpoint(name_or_path, download=download, cache_dir=cache_dir)
    checkpoint = read_checkpoint(path, config)
    model = GroundingDINO(checkpoint.config)
    report = LoadReport(source=checkpoint.source, format=checkpoint.format, config_origin=checkpoint.config_origin)
    load_state_dict_strict(model, checkpoint.state_dict, report)
    return model.to(device or "cpu").eval(), report


# ---------------------------------------------------------------------------------------------- saving


def map_tensors_keeping_ties(
    state_dict: dict[str, torch.Tensor], convert: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """`convert` applied once per distinct tensor: keys that share one (the tied box heads) share the result, so
    torch.save writes it once (a per-key `.cpu()` of CUDA tensors or `.half()` would store it once per key)."""
    converted: dict[tuple, torch.Tensor] = {}
    result = {}
    for key, tensor in state_dict.items():
        identity = (tensor.device, tensor.dtype, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        if identity not in converted:
            converted[identity] = convert(tensor)
        result[key] = converted[identity]
    return result


def state_dict_on_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` detached on the CPU, tied tensors still tied (for torch.save)."""
    return map_tensors_keeping_ties(module.state_dict(), lambda tensor: tensor.detach().cpu())


def save_checkpoint(model: GroundingDINO, path: str | os.PathLike) -> Path:
    """Official layout (`{"model": state_dict}`) plus `"config"`: readable by the official code and by us.
    Tied tensors stay tied in the file, also from a model on a GPU."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state_dict_on_cpu(model), "config": model.config.to_dict()}, path)
    return path


def hf_file_state(model: GroundingDINO) -> dict[str, torch.Tensor]:
    """The model's weights as transformers' `save_pretrained` writes them: HF key names, each decoder head once
    (a shared head as `{head}.0`, per-layer heads as `{head}.{i}`; the decoder's aliases left out)."""
    config = model.config
    shared = {"bbox_embed": config.share_box_head, "class_embed": config.share_class_head}

    def written(key: str) -> bool:
        if key.startswith(("model.decoder.bbox_embed.", "model.decoder.class_embed.")):
            return False
        head, _, rest = key.partition(".")
        return not (head in shared and shared[head] and not rest.startswith("0."))

    return {key: tensor for key, tensor in official_to_hf(model.state_dict()).items() if written(key)}


def save_hf_checkpoint(model: GroundingDINO, directory: str | os.PathLike) -> Path:
    """transformers layout: `config.json` + `model.safetensors`, loadable by
    `(MM)GroundingDinoForObjectDetection.from_pretrained(directory)` and by `load_model(directory)`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share memory, so every tensor is also made its own copy
    tensors = {key: tensor.detach().cpu().contiguous().clone() for key, tensor in hf_file_state(model).items()}
    save_file(tensors, directory / HF_WEIGHTS_FILE, metadata={"format": "pt"})
    hf = hf_config(model.config)
    hf.architectures = [
        "MMGroundingDinoForObjectDetection" if model.config.contrastive_bias else "GroundingDinoForObjectDetection"
    ]
    hf.to_json_file(str(directory / HF_CONFIG_FILE))
    return directory


# ---------------------------------------------------------------------------------------------- locating


def display_name(name_or_path: str | os.PathLike) -> str:
    """What to show users for a model spec: a registry or hub name as is, a local file or folder by its own name
    (a server's folders are nobody else's business)."""
    path = Path(name_or_path)
    return path.name if path.exists() or path.is_absolute() else str(name_or_path)


def _how_to_pass_local(hub: HubWeights | None) -> str:
    """The sentence every WeightsUnavailableError ends with."""
    if hub is None or hub.filenames[0].endswith(".pth"):
        target = hub.filenames[0] if hub else "groundingdino_swint_ogc.pth"
        where = f" from {hub.urls[0]}" if hub else ""
    else:
        target = hub.repo_id.split("/")[-1]
        where = f" ({' and '.join(hub.urls)}) into a folder {target}/"
    return (
        f"Download the weights{where} on a machine with internet access and pass the local path: "
        f"GroundingDetector.from_pretrained('/path/to/{target}') (a .pth file, a .safetensors file or a folder "
        f"with config.json + model.safetensors), or set {CHECKPOINT_ENV}=/path/to/{target}."
    )


def resolve_checkpoint(
    name_or_path: str | os.PathLike,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Local file/folder for `name_or_path`.

    Order: an existing local path; the file named by $GROUNDING_DINO_CHECKPOINT; a known name
    (`KNOWN_WEIGHTS`) or any "owner/repo" with HF files, fetched with `hf_hub_download` (cached).
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    override = os.environ.get(CHECKPOINT_ENV)
    if override:
        override_path = Path(override).expanduser()
        if not override_path.exists():
            raise WeightsUnavailableError(f"{CHECKPOINT_ENV}={override} does not exist. Point it to a checkpoint file.")
        return override_path
    name = str(name_or_path)
    hub = KNOWN_WEIGHTS.get(name)
    looks_like_repo = re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", name) is not None
    if hub is None and looks_like_repo and not name.endswith((".pth", ".safetensors")):
        hub = HubWeights(name, (HF_CONFIG_FILE, HF_WEIGHTS_FILE))
    if hub is None:
        short = [known for known in KNOWN_WEIGHTS if "/" not in known]
        raise WeightsUnavailableError(
            f"no checkpoint file or known model named {name!r}. Known names: {', '.join(short)} (or any Hugging "
            f"Face repo id with config.json + model.safetensors). " + _how_to_pass_local(None)
        )
    if not download:
        raise WeightsUnavailableError(
            f"{name} is not available locally and downloading is off. " + _how_to_pass_local(hub)
        )
    return download_weights(hub, cache_dir)


def download_weights(hub: HubWeights, cache_dir: str | os.PathLike | None = None) -> Path:
    """`hub`'s files from the HF cache, else downloaded into it (progress bars, resumable); returns the .pth
    file or the folder holding config.json + model.safetensors."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    paths = []
    for filename in hub.filenames:
        try:  # a cached copy first: released weights do not change, and no network round trip is needed
            paths.append(Path(hf_hub_download(hub.repo_id, filename, cache_dir=cache_dir, local_files_only=True)))
            continue
        except LocalEntryNotFoundError:
            pass
        try:
            paths.append(Path(hf_hub_download(hub.repo_id, filename, cache_dir=cache_dir)))
        except Exception as error:  # offline mode, no network, 404, auth: all mean "not here"
            first_line = (str(error).strip().splitlines() or [""])[0]
            offline = " (HF_HUB_OFFLINE is set and it is not in the cache)" if constants.HF_HUB_OFFLINE else ""
            raise WeightsUnavailableError(
                f"could not get {filename} from the Hugging Face hub repo {hub.repo_id}{offline}: "
                f"{type(error).__name__}: {first_line}. "
                + _how_to_pass_local(hub)
            ) from error
    return paths[0] if len(paths) == 1 else paths[-1].parent

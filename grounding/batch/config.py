"""Settings of a batch run: what to find and with which models (`BatchConfig`), and where the Ray engine runs it
(`RayConfig`). Both are checked once here, when built."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from grounding.errors import InvalidOptionError
from grounding.images import ImageLimits
from grounding.pipeline import check_nms_iou
from grounding.postprocess import check_threshold
from grounding.precision import CHOICES as PRECISION_CHOICES
from grounding.text import normalize_caption

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class BatchConfig:
    """What every image goes through, whichever engine runs it."""

    prompt: str  # "cat . dog ." (normalised when built)
    detector: str = "swint_ogc"  # a detector name, a local checkpoint, or "shapes" (the shipped demo bundle)
    sam: str | None = "auto"  # a segmenter name or file; None = boxes only
    sam_checkpoint: str | None = None  # local SAM .pth
    device: str | None = None  # None: cuda if available (a Ray GPU actor always uses its GPU)
    precision: str = "auto"
    download: bool = True
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    nms_iou: float | None = None
    multimask: bool = False
    annotated: bool = True  # write OUT/annotated/<name>.png
    save_masks: bool = False  # write OUT/masks/<name>/NNN_phrase.png
    shard_size: int = 256  # records per committed shard (also committed every `shard_seconds`)
    shard_seconds: float = 60.0
    max_file_bytes: int = 256 << 20  # larger files are recorded as failed, unread
    image_limits: ImageLimits = field(default_factory=ImageLimits)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", normalize_caption(self.prompt))
        check_threshold(self.box_threshold, "box threshold")
        check_threshold(self.text_threshold, "text threshold")
        check_nms_iou(self.nms_iou)
        if self.precision not in PRECISION_CHOICES:
            raise InvalidOptionError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, not {self.precision!r}")
        if self.shard_size < 1 or self.shard_seconds <= 0 or self.max_file_bytes < 1:
            raise InvalidOptionError("shard size, shard seconds and the file size limit must be positive")

    def run_settings(self) -> dict[str, Any]:
        """What decides the answers and what is written for each image, recorded in OUT/run.json: a rerun into the
        same folder must match it (each record also says how the models ran: `records`)."""
        keys = ("prompt", "detector", "sam", "sam_checkpoint", "precision", "box_threshold", "text_threshold",
                "nms_iou", "multimask", "annotated", "save_masks")
        settings = asdict(self)
        return {key: settings[key] for key in keys}


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide the Ray engine runs."""

    address: str | None = None  # None: start a local Ray; "auto" or "ray://host:10001" joins a cluster
    num_cpus: int | None = None  # CPUs of a local Ray started here (None: all)
    actors: int | None = None  # model actors (None: one per GPU, or on CPUs one per `cpus_per_actor` CPUs left)
    num_gpus: float | None = None  # GPUs per actor (None: 1 if the cluster has GPUs, else 0)
    cpus_per_actor: int = 1  # CPU actors run torch with this many threads
    batch_size: int = 8  # images per block handed to an actor
    wait_for_actors_s: float = 600.0  # give up when no actor could start in this time (a cluster short of GPUs)

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise InvalidOptionError(f"actors must be at least 1, not {self.actors}")
        if self.num_gpus is not None and self.num_gpus < 0:
            raise InvalidOptionError(f"GPUs per actor must be 0 or more, not {self.num_gpus}")
        if self.cpus_per_actor < 1 or self.batch_size < 1:
            raise InvalidOptionError("CPUs per actor and the batch size must be at least 1")
        if self.num_cpus is not None and self.num_cpus < 2:
            raise InvalidOptionError("a local Ray needs at least 2 CPUs (one for the model actor, one for reading)")

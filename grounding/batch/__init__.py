"""Label a folder or a whole dataset: `python -m grounding.batch` (see `__main__`) or `label_dataset` here.

    list_inputs  ->  RunFolder.todo (skip what OUT already holds)  ->  an engine: `local` (this process) or
    `ray` (Ray Data, actors)  ->  each image's record committed in shards  ->  merged into OUT/coco.json

Both engines run the same per-image steps (`records`), so they write the same records; a run stopped at any
point is finished by running it again (`store`).
"""
from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from grounding.batch.config import ENGINES, BatchConfig, RayConfig
from grounding.batch.inputs import ImageItem, list_inputs
from grounding.batch.local import run_local
from grounding.batch.records import EncodedImage, load_pipeline
from grounding.batch.store import MergeSummary, RunFolder
from grounding.errors import InvalidOptionError
from grounding.pipeline import GroundedSAM

__all__ = ["BatchConfig", "RayConfig", "MergeSummary", "label_dataset", "list_inputs"]


def label_dataset(
    images: str | Path | list[ImageItem],
    out: str | Path,
    config: BatchConfig,
    engine: str = "local",
    ray_config: RayConfig | None = None,
    pipeline: GroundedSAM | None = None,
    progress: bool = True,
) -> MergeSummary:
    """Label `images` (a folder, a glob, a .txt / .parquet list, or listed items) into `out`, resuming what `out`
    holds, and write `out/coco.json`. `pipeline` gives the local engine loaded models. KeyboardInterrupt keeps
    every finished image (committed) and propagates. Raises GroundingError for bad options, inputs or weights."""
    if engine not in ENGINES:
        raise InvalidOptionError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine == "ray":
        from grounding.batch.ray_engine import import_ray

        import_ray()  # before any work: say how to install it
    items = images if isinstance(images, list) else list_inputs(images, exclude=out)
    if engine == "local":  # a model that cannot load stops the run before OUT is touched
        pipeline = pipeline or load_pipeline(config)
    with RunFolder(Path(out), config) as folder:
        todo = folder.todo(items)
        by_id = {item.id: item for item in todo}
        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc="images", unit="img", disable=not progress)

        def keep(encoded: EncodedImage) -> None:
            if folder.add(encoded, by_id[encoded.id]):
                bar.update()

        try:
            if todo and engine == "local":
                run_local(todo, config, keep, pipeline)
            elif todo:
                from grounding.batch.ray_engine import run_ray

                run_ray(todo, config, ray_config or RayConfig(), keep, flush=folder.commit)
        finally:
            bar.close()
        folder.commit()
        return folder.merge(items)

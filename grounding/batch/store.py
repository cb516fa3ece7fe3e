"""The output folder of a batch run, and why a run can be stopped at any moment and rerun to finish:

    OUT/run.json                    the settings that decide the answers; a rerun into OUT must match them
    OUT/shards/part-NNNNNN.jsonl    records (`grounding.batch.records`), one JSON line per image; a shard is
                                    written aside and renamed into place, so it is whole or absent
    OUT/annotated/<id>[.png]        pictures ("sub/a.jpg" -> sub/a.jpg.png), and OUT/masks/<id>/NNN_phrase.png
                                    with --save-masks, written before the shard naming them is committed
    OUT/coco.json                   merged from the shards at the end: every listed image that succeeded, once
    OUT/failed.json                 listed images whose record is an error (a rerun tries them again)
    OUT/.lock                       held while a run writes, so two runs never share a folder

Only this process writes shards. An image already committed is skipped when a rerun lists the work, and a
record for an image that is already done (a retried task that delivered twice) is dropped, so each image is
in the shards, and in coco.json, exactly once.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grounding.batch.config import BatchConfig
from grounding.batch.inputs import ImageItem
from grounding.batch.records import EncodedImage
from grounding.errors import InvalidOptionError
from grounding.export import coco_categories, coco_rle_to_mask, mask_png_bytes, mask_png_name
from grounding.text import split_phrases

try:
    import fcntl
except ImportError:  # Windows: no advisory lock
    fcntl = None

RUN_FILE = "run.json"
SHARD_DIR = "shards"
SHARD_PATTERN = "part-*.jsonl"
COCO_FILE = "coco.json"
FAILED_FILE = "failed.json"


@dataclass
class MergeSummary:
    images: int  # listed images in coco.json
    objects: int
    failed: dict[str, str] = field(default_factory=dict)  # id -> error, listed images without a result


class RunFolder:
    """OUT while a run writes to it: `with RunFolder(out, config) as folder: ... folder.add(encoded) ...`."""

    def __init__(self, out: Path, config: BatchConfig) -> None:
        self.out = Path(out)
        self.config = config
        self.done: set[str] = set()  # ids with a committed result
        self.errors: dict[str, str] = {}  # id -> error of its last committed failure (no result yet)
        self._pending: list[str] = []
        self._last_commit = time.monotonic()
        self._lock_file = None
        self._next_shard = 1
        self._ran_as: Any = None  # how the committed results were computed ({"device": "cpu", "precision": "bf16"})

    def __enter__(self) -> "RunFolder":
        (self.out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._check_settings()
            numbers = [int(path.stem.split("-")[1]) for path in (self.out / SHARD_DIR).glob(SHARD_PATTERN)]
            self._next_shard = max(numbers, default=0) + 1  # only this writer adds shards while the lock is held
            for record in self.records():
                if "error" in record:
                    if record["id"] not in self.done:
                        self.errors[record["id"]] = record["error"]
                else:
                    self._check_models(record)
                    self.done.add(record["id"])
                    self.errors.pop(record["id"], None)
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.commit()
        finally:
            self._unlock()

    def todo(self, items: list[ImageItem]) -> list[ImageItem]:
        """The listed images without a committed result."""
        return [item for item in items if item.id not in self.done]

    def add(self, encoded: EncodedImage, item: ImageItem) -> bool:
        """Keep one image's record (and write its pictures); False for an image that is already done."""
        if encoded.id in self.done:
            return False
        record = json.loads(encoded.record)
        if "error" in record:
            self.errors[encoded.id] = record["error"]
        else:
            self._check_models(record)
            self._write_pictures(record, encoded.annotated, item)
            self.done.add(encoded.id)
            self.errors.pop(encoded.id, None)
        self._pending.append(encoded.record)
        if len(self._pending) >= self.config.shard_size or time.monotonic() - self._last_commit >= self.config.shard_seconds:
            self.commit()
        return True

    def commit(self) -> None:
        """Write the records kept since the last commit as one new shard (whole or not at all)."""
        self._last_commit = time.monotonic()
        pending, self._pending = self._pending, []  # an interrupt after the rename must not commit them twice
        if not pending:
            return
        final = self.out / SHARD_DIR / f"part-{self._next_shard:06d}.jsonl"
        aside = final.with_name(f".{final.name}.tmp")
        try:
            with open(aside, "w", encoding="utf-8") as stream:
                stream.write("\n".join(pending) + "\n")
                stream.flush()
                os.fsync(stream.fileno())
        except BaseException:
            self._pending = pending + self._pending
            raise
        os.replace(aside, final)
        self._next_shard += 1

    def records(self) -> Any:
        """Every committed record, shard by shard."""
        for path in sorted((self.out / SHARD_DIR).glob(SHARD_PATTERN)):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as error:
                    raise InvalidOptionError(f"{path} line {number} is not a record ({error.msg}); "
                                             "remove that shard to redo its images") from error

    def merge(self, items: list[ImageItem]) -> MergeSummary:
        """coco.json (and failed.json) for the listed images from the committed shards."""
        listed = {item.id for item in items}
        found: dict[str, dict[str, Any]] = {}
        for record in self.records():
            if record["id"] in listed and "error" not in record:
                found.setdefault(record["id"], record)
        names = split_phrases(self.config.prompt)
        for record in (found[key] for key in sorted(found)):
            names += [phrase for phrase in record["prompt_phrases"] if phrase not in names]
        names += sorted({obj["phrase"] for record in found.values() for obj in record["objects"]} - set(names))
        images, annotations = [], []
        for image_id, key in enumerate(sorted(found), start=1):
            record = found[key]
            images.append({"id": image_id, "file_name": key, "width": record["width"], "height": record["height"],
                           "sha256": record["sha256"]})
            for obj in record["objects"]:
                annotation = {"id": len(annotations) + 1, "image_id": image_id,
                              "category_id": names.index(obj["phrase"]) + 1, "bbox": obj["bbox"], "area": obj["area"],
                              "score": obj["score"], "iscrowd": 0}
                if "segmentation" in obj:
                    annotation["segmentation"] = obj["segmentation"]
                annotations.append(annotation)
        _write_json(self.out / COCO_FILE, {"images": images, "annotations": annotations, "categories": coco_categories(names)})
        errors = {**{key: "no result was recorded (rerun to label it)" for key in listed}, **self.errors}
        failed = {key: errors[key] for key in sorted(listed) if key not in found}
        if failed:
            _write_json(self.out / FAILED_FILE, [{"id": key, "error": error} for key, error in failed.items()])
        else:
            (self.out / FAILED_FILE).unlink(missing_ok=True)
        return MergeSummary(len(images), len(annotations), failed)

    def _write_pictures(self, record: dict[str, Any], annotated: bytes, item: ImageItem) -> None:
        if annotated:
            name = item.output_name if item.output_name.endswith(".png") else f"{item.output_name}.png"
            path = self.out / "annotated" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(annotated)
        if self.config.save_masks:
            folder = self.out / "masks" / item.output_name
            folder.mkdir(parents=True, exist_ok=True)
            for index, obj in enumerate(record["objects"]):
                if "segmentation" in obj:
                    (folder / mask_png_name(index, obj["phrase"])).write_bytes(mask_png_bytes(coco_rle_to_mask(obj["segmentation"])))

    def _check_models(self, record: dict[str, Any]) -> None:
        """All results of one folder come from the same models run the same way (device kind and precision decide
        the last digits): a rerun elsewhere must not mix two kinds in one COCO file."""
        ran = record.get("ran_as")
        if self._ran_as is None:
            self._ran_as = ran
        elif ran != self._ran_as:
            raise InvalidOptionError(
                f"{self.out} holds results computed as {self._ran_as}, this run computes {ran}; pass the same "
                "--device and --precision as before, or use another --out"
            )

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _lock(self) -> None:
        self._lock_file = open(self.out / ".lock", "w")
        if fcntl is None:
            return
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            self._lock_file.close()
            self._lock_file = None
            raise InvalidOptionError(f"another run is writing to {self.out}; wait for it or use another --out") from error

    def _check_settings(self) -> None:
        path = self.out / RUN_FILE
        settings = self.config.run_settings()
        has_results = any((self.out / SHARD_DIR).glob(SHARD_PATTERN))
        if has_results and not path.is_file():
            raise InvalidOptionError(f"{self.out} holds results but no {RUN_FILE} saying how they were made; "
                                     "use another --out, or delete that folder to start over")
        if has_results:
            try:
                recorded = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                recorded = None
            if recorded != settings:
                differ = sorted(key for key in settings if not isinstance(recorded, dict) or recorded.get(key) != settings[key])
                raise InvalidOptionError(
                    f"{self.out} holds a run with other settings ({', '.join(differ) or RUN_FILE}); use another --out, "
                    "or delete that folder to start over"
                )
        else:  # a new folder, or one without results yet
            _write_json(path, settings)


def _write_json(path: Path, value: Any) -> None:
    """Whole or not at all: written aside, then renamed."""
    aside = path.with_name(f".{path.name}.tmp")
    aside.write_text(json.dumps(value, indent=1), encoding="utf-8")
    os.replace(aside, path)

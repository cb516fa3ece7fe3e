"""Which images a batch run labels: a folder, a glob, or a .txt / .parquet list of paths, as `ImageItem`s.

An item's `id` names the image in every output (records, COCO `file_name`, resume): its path relative to the
folder or to the glob's fixed prefix, or the path as written in the list. Ids are unique and sorted, so the
same inputs give the same listing on every run and engine.
"""
from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from grounding.errors import InvalidOptionError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
LIST_SUFFIXES = {".txt", ".parquet"}
PATH_COLUMN = "path"


@dataclass(frozen=True)
class ImageItem:
    id: str  # "sub/a.jpg": unique within a run, POSIX separators
    path: str  # where a reader opens it (absolute)
    output_name: str  # OUT/annotated/<name>.png, OUT/masks/<name>/: the id kept inside OUT ("sub/a.jpg")


def find_images(directory: Path) -> list[Path]:
    """Image files directly in `directory`, sorted by name."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_inputs(spec: str | Path, exclude: str | Path | None = None) -> list[ImageItem]:
    """The images `spec` names (a folder, not recursive; a glob, `**` recursive; a .txt list, one path per line,
    `#` comments; a .parquet list with a `path` column), leaving out any under `exclude` (the run's output folder,
    whose pictures a glob would otherwise pick up); InvalidOptionError when it names none."""
    text = os.path.expanduser(str(spec))
    path = Path(text)
    if path.is_dir():
        pairs = [(p.name, p) for p in find_images(path)]
    elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        pairs = _listed(path)
    elif glob.has_magic(text):
        root = _fixed_prefix(text)
        pairs = [(Path(p).relative_to(root).as_posix(), Path(p)) for p in glob.glob(text, recursive=True)
                 if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES]
    else:
        raise InvalidOptionError(
            f"--images {text} is not a folder, a glob matching images (quote it), or a .txt / .parquet list of paths"
        )
    skip = Path(exclude).resolve() if exclude is not None else None
    unique = dict(sorted(((image_id, p) for image_id, p in pairs
                          if skip is None or not p.resolve().is_relative_to(skip)), key=lambda pair: pair[0]))
    if not unique:
        raise InvalidOptionError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {text}")
    return [ImageItem(image_id, str(p.resolve()), output_name(image_id)) for image_id, p in unique.items()]


def output_name(image_id: str) -> str:
    """Where an image's pictures go inside OUT, from its id alone (so it never changes with the listing): the id
    itself, or, where it would leave OUT ("..", a root), its parts inside OUT plus a hash of the id."""
    parts = [part for part in PurePosixPath(image_id).parts if part not in ("/", ".", "..")]
    safe = "/".join(parts) or "image"
    if safe == image_id:
        return safe
    return f"{safe}~{hashlib.sha256(image_id.encode()).hexdigest()[:8]}"


def _fixed_prefix(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard ("data/**/*.jpg" -> data)."""
    parts = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _listed(list_file: Path) -> list[tuple[str, Path]]:
    """(id, path) per listed path; relative paths are taken from the list file's folder."""
    if list_file.suffix.lower() == ".parquet":
        entries = _parquet_paths(list_file)
    else:
        lines = (line.strip() for line in list_file.read_text(encoding="utf-8", errors="replace").splitlines())
        entries = [line for line in lines if line and not line.startswith("#")]
    return [(PurePosixPath(Path(entry).as_posix()).as_posix(), list_file.parent / Path(entry).expanduser())
            for entry in entries]


def _parquet_paths(list_file: Path) -> list[str]:
    try:
        import pyarrow.parquet as parquet
    except ImportError as error:
        raise InvalidOptionError("a .parquet list needs pyarrow: pip install -r requirements-ray.txt") from error
    try:
        table = parquet.read_table(list_file)
    except Exception as error:  # pyarrow raises several types for a file that is not Parquet
        raise InvalidOptionError(f"{list_file.name} is not a readable Parquet file ({error})") from error
    column = PATH_COLUMN if PATH_COLUMN in table.column_names else None
    if column is None:
        raise InvalidOptionError(f"{list_file.name} has no {PATH_COLUMN!r} column (it has {', '.join(table.column_names)})")
    return [str(value) for value in table.column(column).to_pylist() if value]

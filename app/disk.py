"""The studio's disk use, bounded: every file under Gradio's upload folder (uploads, the page's results and
exports, which the studio writes there so Gradio serves them without a copy) is deleted once it has not been
used for `max_age_s`, and the oldest go first whenever the folder holds more than `max_bytes`.

"Used" is the file's ctime: Gradio touches a cached file when it hands it out again, and the studio's image
loader touches an upload each time a request reads it, so an image a user is still working on stays. Files
Gradio must keep (the page's example images) are never deleted. Files younger than `grace_s` are left alone
for a moment so an upload being written is never cut.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sweep:
    deleted_files: int
    deleted_bytes: int
    kept_bytes: int


class DiskJanitor:
    """Age and size bound of one folder, swept by a background thread every `interval_s`."""

    def __init__(
        self,
        folder: str | os.PathLike,
        max_bytes: int,
        max_age_s: float,
        keep: Callable[[], set[str]] = set,
        interval_s: float = 2.0,
        grace_s: float = 2.0,
    ) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.keep = keep
        self.interval_s = interval_s
        self.grace_s = grace_s
        self._stop = threading.Event()
        self._sweep_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def sweep(self, now: float | None = None) -> Sweep:
        """Delete what is too old, then the oldest until the folder is within `max_bytes`."""
        with self._sweep_lock:
            now = time.time() if now is None else now
            keep = {os.path.realpath(path) for path in self.keep()}
            files = []  # (last used, size, path)
            for path in _files_under(self.folder):
                try:
                    stat = path.lstat()
                except OSError:
                    continue
                files.append((max(stat.st_ctime, stat.st_mtime), stat.st_size, path))
            total = sum(size for _, size, _ in files)
            deleted = deleted_bytes = 0
            for used, size, path in sorted(files):
                if str(path) in keep or now - used < self.grace_s:
                    continue
                if now - used <= self.max_age_s and total <= self.max_bytes:
                    continue
                try:
                    path.unlink()
                except OSError:
                    continue
                total -= size
                deleted += 1
                deleted_bytes += size
            _remove_empty_folders(self.folder, now - self.grace_s)
        if deleted:
            log.info("disk: deleted %d files (%.1f MB); %.1f MB kept", deleted, deleted_bytes / 2**20, total / 2**20)
        return Sweep(deleted, deleted_bytes, total)

    def start(self) -> "DiskJanitor":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="disk-janitor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:  # the janitor must outlive any odd file
                log.exception("disk sweep failed")
            self._stop.wait(self.interval_s)


def _files_under(folder: Path):
    for root, _, names in os.walk(folder):
        for name in names:
            yield Path(root, name)


def _remove_empty_folders(folder: Path, older_than: float) -> None:
    """Remove empty folders last changed before `older_than` (Gradio makes a folder, then writes into it)."""
    for root, dirs, files in os.walk(folder, topdown=False):
        if root == str(folder) or dirs or files:
            continue
        try:
            if os.stat(root).st_mtime < older_than:
                os.rmdir(root)
        except OSError:
            pass

"""Bounded, thread-safe, content-keyed caches that make prompt tuning live.

Three levels (held together by `PipelineCaches`):
  1. image -> detector `ImageEncoding` and SAM `SamEmbedding`: a new prompt on a seen image skips the
     Swin backbone and SAM's ViT;
  2. (image, prompt, detector) -> `RawDetections` (all queries x tokens): a threshold or NMS change only
     re-filters;
  3. (image, box, SAM, multimask) -> mask: re-filtering never re-decodes a mask it already has.

Keys are built from content, never from object identity: `image_key` hashes the pixels and shape,
prompts are normalised by the caller, model ids name the weights. Every cache is an `LRUCache` bounded
both by entry count and by bytes, with hit/miss counters.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import torch

V = TypeVar("V")


def image_key(pixels: np.ndarray) -> str:
    """Content hash of an image: blake2b over shape, dtype and pixel bytes (about 3 ms for 800x1200 RGB)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((pixels.shape, pixels.dtype.str)).encode())
    digest.update(np.ascontiguousarray(pixels).data)
    return digest.hexdigest()


def box_key(box: np.ndarray) -> tuple[float, float, float, float]:
    """A box as a hashable key, rounded to 1/100 px so float noise does not split entries."""
    return tuple(round(float(v), 2) for v in box)  # type: ignore[return-value]


def nbytes_of(value: Any) -> int:
    """Approximate memory held by a cached value: `.nbytes` where defined, tensors/arrays, containers."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, (int, np.integer)):
        return int(nbytes)
    if isinstance(value, dict):
        return sum(nbytes_of(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes_of(v) for v in value)
    return 64


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class LRUCache(Generic[V]):
    """Least-recently-used map bounded by `max_entries` and `max_bytes`; safe to share between threads.

    `get_or_create(key, factory)` computes a missing value once even when several threads ask for the
    same key at the same time (the others wait for it instead of duplicating the model call).
    A value larger than `max_bytes` is returned but not stored.
    """

    def __init__(self, max_entries: int, max_bytes: int, name: str = "cache") -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("cache bounds must be >= 0")
        self.name = name
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry[0]

    def put(self, key: Hashable, value: V) -> None:
        size = nbytes_of(value)
        with self._lock:
            if key in self._entries:
                self._bytes -= self._entries.pop(key)[1]
            if size > self.max_bytes or self.max_entries == 0:
                return
            self._entries[key] = (value, size)
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
                self.stats.evictions += 1

    def get_or_create(self, key: Hashable, factory: Callable[[], V]) -> tuple[V, bool]:
        """(value, hit). Runs `factory` at most once per key at a time across threads."""
        value = self.get(key)
        if value is not None:
            return value, True
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:  # another thread may have filled it while we waited
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    self.stats.misses -= 1
                    self.stats.hits += 1
                    return entry[0], True
            try:
                value = factory()
                self.put(key, value)
            finally:
                with self._lock:
                    self._key_locks.pop(key, None)
        return value, False

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


@dataclass(frozen=True)
class CacheConfig:
    """Bounds of the pipeline caches. Defaults fit a 16 GB machine with the SwinT + vit_b models
    (detector features at 800x1200 are about 40 MB, a SAM embedding 4 MB, a mask 1 MB)."""

    image_entries: int = 8
    image_bytes: int = 1 << 30
    raw_entries: int = 64
    raw_bytes: int = 256 << 20
    mask_entries: int = 512
    mask_bytes: int = 512 << 20


@dataclass
class PipelineCaches:
    """The three cache levels of `GroundedSAM`; may be shared by several pipelines (keys hold model ids)."""

    config: CacheConfig = field(default_factory=CacheConfig)

    def __post_init__(self) -> None:
        c = self.config
        self.image_features: LRUCache[Any] = LRUCache(c.image_entries, c.image_bytes, "image_features")
        self.sam_embeddings: LRUCache[Any] = LRUCache(c.image_entries, c.image_bytes, "sam_embeddings")
        self.raw_detections: LRUCache[Any] = LRUCache(c.raw_entries, c.raw_bytes, "raw_detections")
        self.masks: LRUCache[Any] = LRUCache(c.mask_entries, c.mask_bytes, "masks")

    def all(self) -> dict[str, LRUCache[Any]]:
        return {
            "image_features": self.image_features,
            "sam_embeddings": self.sam_embeddings,
            "raw_detections": self.raw_detections,
            "masks": self.masks,
        }

    def summary(self) -> dict[str, dict[str, int]]:
        """Per cache: entries, bytes, hits, misses, evictions (for the UI's status line and tests)."""
        return {
            name: {
                "entries": len(cache),
                "bytes": cache.nbytes,
                "hits": cache.stats.hits,
                "misses": cache.stats.misses,
                "evictions": cache.stats.evictions,
            }
            for name, cache in self.all().items()
        }

    def clear(self) -> None:
        for cache in self.all().values():
            cache.clear()

"""LRUCache: bounds by count and bytes, LRU order, counters, one computation per key across threads."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from grounding.cache import LRUCache, box_key, image_key, nbytes_of


def test_image_key_is_content_based():
    a = np.zeros((10, 20, 3), np.uint8)
    assert image_key(a) == image_key(a.copy())
    b = a.copy()
    b[3, 4, 1] = 1
    assert image_key(a) != image_key(b)
    assert image_key(a) != image_key(a.reshape(20, 10, 3))  # same bytes, other shape
    assert image_key(np.asfortranarray(a)) == image_key(a)


def test_box_key_rounds_float_noise():
    assert box_key(np.array([1.0, 2.0, 3.0, 4.0])) == box_key(np.array([1.000001, 2.0, 3.0, 4.0]))


def test_lru_bounded_by_count_and_order():
    cache: LRUCache[int] = LRUCache(max_entries=2, max_bytes=1 << 20)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now most recent
    cache.put("c", 3)  # evicts b
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3
    assert cache.get("b") is None
    assert (cache.stats.hits, cache.stats.misses, cache.stats.evictions) == (3, 1, 1)


def test_lru_bounded_by_bytes():
    cache: LRUCache[np.ndarray] = LRUCache(max_entries=100, max_bytes=2500)
    for i in range(5):
        cache.put(i, np.zeros(1000, np.uint8))
    assert len(cache) == 2 and cache.nbytes == 2000 and list(cache._entries) == [3, 4]
    cache.put("big", np.zeros(5000, np.uint8))  # larger than the whole cache: not stored
    assert "big" not in cache and len(cache) == 2


def test_nbytes_of_values():
    import torch

    assert nbytes_of(torch.zeros(10, 4)) == 160
    assert nbytes_of((np.zeros(8, np.uint8), np.float32(1))) == 12


def test_get_or_create_computes_once_across_threads():
    cache: LRUCache[int] = LRUCache(max_entries=4, max_bytes=1 << 20)
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return 42

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_create("k", slow))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(hit for _, hit in results) == [False, True, True, True]
    assert all(value == 42 for value, _ in results)


def test_failed_factory_leaves_no_entry():
    cache: LRUCache[int] = LRUCache(max_entries=4, max_bytes=1 << 20)

    def boom():
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError):
        cache.get_or_create("k", boom)
    assert "k" not in cache
    assert cache.get_or_create("k", lambda: 7) == (7, False)

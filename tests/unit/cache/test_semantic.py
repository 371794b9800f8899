from __future__ import annotations

import numpy as np

from inferplane.cache.semantic import ENTRY_OVERHEAD, SemanticIndex, normalised


def _vectors(n: int, seed: int = 3) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_nearest_within_a_partition_only() -> None:
    index = SemanticIndex(max_bytes=1 << 20)
    vs = _vectors(50)
    for i, v in enumerate(vs):
        index.add("p1" if i < 25 else "p2", v, f"key{i}")
    probe = normalised(vs[3] + 0.05 * vs[40])
    best = index.search("p1", probe)[0]
    assert best.key == "key3" and best.score > 0.99
    assert all(c.key != "key3" for c in index.search("p2", probe))
    assert index.search("nobody", probe) == []


def test_the_byte_bound_evicts_the_least_recently_used() -> None:
    vs = _vectors(4)
    size = vs[0].nbytes + ENTRY_OVERHEAD
    index = SemanticIndex(max_bytes=3 * size)
    for i in range(3):
        index.add("p", vs[i], f"key{i}")
    first = index.search("p", vs[0])[0]
    index.touch(first.label)  # key0 used: key1 is now the oldest
    index.add("p", vs[3], "key3")
    keys = {c.key for c in index.search("p", vs[1], count=4)}
    assert keys == {"key0", "key2", "key3"}
    assert len(index) == 3 and index.bytes == 3 * size
    for c in index.search("p", vs[1], count=4):
        index.remove(c.label)
    assert len(index) == 0 and index.bytes == 0 and index.search("p", vs[1]) == []

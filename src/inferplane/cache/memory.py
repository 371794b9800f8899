"""A byte-bounded, least-recently-used map with a time to live per entry.

The embedded default store of the exact cache (one process; Redis shares a cache
between replicas). Sizes are the stored values' lengths plus a fixed per-entry
overhead, so the bound holds for many small entries too.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

# A key (64 hex digits), the tuple, the OrderedDict node: about this much beside the value.
ENTRY_OVERHEAD = 200


class LruBytes:
    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if self._clock() >= expires:
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: str, value: bytes, ttl_s: float) -> list[str]:
        """Store; returns the keys evicted to make room (oldest use first)."""
        size = len(value) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return []
        if key in self._items:
            self._drop(key)
        evicted = []
        while self.bytes + size > self.max_bytes:
            old, (_, gone) = self._items.popitem(last=False)
            self.bytes -= len(gone) + ENTRY_OVERHEAD
            evicted.append(old)
        self._items[key] = (self._clock() + ttl_s, value)
        self.bytes += size
        return evicted

    def _drop(self, key: str) -> None:
        _, value = self._items.pop(key)
        self.bytes -= len(value) + ENTRY_OVERHEAD

"""Semantic entries shared between replicas through a Redis stream.

Each replica keeps its own in-memory index (lookups stay local and fast); what one
replica stores it also appends to a capped Redis stream, and every replica follows the
stream and adds the others' entries to its index. A replica that starts replays the
stream first, so it begins with what the others cached. The answers themselves live in
the shared exact store (Redis), so an entry found here is answered by any replica.
A Redis fault only pauses the sharing (logged, retried each second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import RedisError

from inferplane.cache.semantic import SemanticIndex

log = logging.getLogger(__name__)

STREAM = "inferplane:cache:semantic"


class SemanticFeed:
    def __init__(self, redis: Redis, index: SemanticIndex, max_entries: int = 200_000):
        self._redis = redis
        self._index = index
        self._max = max_entries
        self._origin = secrets.token_hex(8)  # this replica's own entries are not re-added
        self._task: asyncio.Task[None] | None = None

    async def publish(self, partition: str, vector: np.ndarray, key: str) -> None:
        fields: dict[Any, Any] = {
            "o": self._origin,
            "p": partition,
            "k": key,
            "v": np.asarray(vector, dtype=np.float32).tobytes(),
        }
        try:
            await self._redis.xadd(STREAM, fields, maxlen=self._max, approximate=True)
        except (RedisError, OSError) as exc:
            log.warning("semantic cache: entry not shared, Redis unreachable (%s)", exc)

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="semantic-cache-feed")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        last = "0-0"  # from the start: what the other replicas cached before this one came
        while True:
            try:
                # RESP2's shape: [(stream, [(entry id, fields), ...])]
                batches: Any = await self._redis.xread({STREAM: last}, count=1000, block=1000)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("semantic cache: not following other replicas (%s)", exc)
                await asyncio.sleep(1)
                continue
            for _, entries in batches or []:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    self._add(fields)

    def _add(self, fields: dict[bytes, bytes]) -> None:
        try:
            if fields[b"o"].decode() == self._origin:
                return
            vector = np.frombuffer(fields[b"v"], dtype=np.float32)
            self._index.add(fields[b"p"].decode(), vector, fields[b"k"].decode())
        except (KeyError, ValueError, RuntimeError) as exc:
            log.warning("semantic cache: a shared entry was left out (%s)", exc)

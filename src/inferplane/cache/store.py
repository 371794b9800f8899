"""Where exact-cache entries live: this process's memory, or Redis shared by replicas."""

from __future__ import annotations

import logging
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from inferplane.cache.memory import LruBytes

log = logging.getLogger(__name__)


class EntryStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...


class MemoryStore:
    """The embedded default: bounded in bytes, least recently used out first."""

    def __init__(self, max_bytes: int):
        self.entries = LruBytes(max_bytes)

    async def get(self, key: str) -> bytes | None:
        return self.entries.get(key)

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self.entries.put(key, value, ttl_s)


class RedisStore:
    """Shared by every replica. Expiry is Redis's own (SET EX); the byte bound is the
    server's `maxmemory` with an LRU policy. A Redis fault is a miss, not an error:
    the request goes to the model."""

    PREFIX = "inferplane:cache:"

    def __init__(self, redis: Redis):
        self._redis = redis

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._redis.get(self.PREFIX + key)
        except (RedisError, OSError) as exc:
            log.warning("response cache: Redis unreachable, lookup skipped (%s)", exc)
            return None
        return value.encode() if isinstance(value, str) else value

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        try:
            await self._redis.set(self.PREFIX + key, value, px=max(1, int(ttl_s * 1000)))
        except (RedisError, OSError) as exc:
            log.warning("response cache: Redis unreachable, answer not stored (%s)", exc)

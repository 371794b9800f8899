"""Change notices between replicas: Redis pub/sub, "the control plane changed".

A replica that changes tenancy or prices publishes a notice after writing the store;
every replica (itself included) rebuilds its snapshot on receipt. A dropped connection
is re-established, and the snapshot rebuilt then too, so a missed notice costs at most
the reconnection delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
CHANNEL = "inferplane:changes"


class ChangeNotices:
    def __init__(self, client: aioredis.Redis, on_change: Callable[[], Awaitable[None]]):
        self._redis = client
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="change-notices")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._subscribed.wait()

    async def publish(self) -> None:
        try:
            await self._redis.publish(CHANNEL, "changed")
        except (RedisError, OSError) as exc:
            log.warning("change notice not sent (%s); other replicas catch up on reconnect", exc)

    async def _listen(self) -> None:
        first = True
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self._subscribed.set()
                    if not first:
                        await self._on_change()  # notices may have been missed meanwhile
                    first = False
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            await self._on_change()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("change notices: connection lost (%s); reconnecting", exc)
                first = False
                await asyncio.sleep(1)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

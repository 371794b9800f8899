"""Gateway side of one worker connection: many concurrent requests over one socket.

Each request gets an id and an unbounded per-request event queue; the number of requests
admitted at once is bounded by `max_queue` (running + waiting in the worker), beyond which
`Overloaded` (429 with Retry-After) is raised at once rather than queueing without limit.
When the connection drops (the worker crashed), every admitted request ends promptly
with `Unavailable` (503): none is left hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable

from inferplane.engines.worker.protocol import Message, Op, decode, encode, wire
from inferplane.errors import Overloaded, Unavailable

log = logging.getLogger(__name__)

_LOST: Message = {"event": "lost"}
_TERMINAL = frozenset({"done", "error", "embeddings"})


class WorkerClient:
    def __init__(
        self,
        model: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_queue: int,
        on_stats: Callable[[Message], None] = lambda stats: None,
    ):
        self.model = model
        self._reader = reader
        self._writer = writer
        self._max_queue = max_queue
        self._on_stats = on_stats
        self._pending: dict[int, asyncio.Queue[Message]] = {}
        self._ids = itertools.count(1)
        self._admitted = 0
        self._closed = False
        self._reader_task = asyncio.create_task(self._read_loop(), name=f"worker-read-{model}")

    @property
    def admitted(self) -> int:
        return self._admitted

    async def _read_loop(self) -> None:
        try:
            while line := await self._reader.readline():
                msg = decode(line)
                queue = self._pending.get(msg.get("id", -1))
                if queue is not None:
                    queue.put_nowait(msg)
                elif msg.get("event") == "stats":  # the engine's own report, no request
                    self._on_stats(msg)
        except (OSError, ValueError) as exc:
            log.warning("connection to worker %s failed: %s", self.model, exc)
        finally:
            self._closed = True
            for queue in self._pending.values():
                queue.put_nowait(_LOST)

    async def stream(self, op: Op) -> AsyncIterator[Message]:
        """Send one request; yield its events up to and including the terminal one."""
        if self._closed:
            raise Unavailable(f"The worker for model '{self.model}' is restarting.")
        if self._admitted >= self._max_queue:
            raise Overloaded(model=self.model, queued=self._admitted, max_queued=self._max_queue)
        rid = next(self._ids)
        queue: asyncio.Queue[Message] = asyncio.Queue()
        self._pending[rid] = queue
        self._admitted += 1
        finished = False
        try:
            self._writer.write(encode(wire(op, rid)))
            while True:
                msg = await queue.get()
                event = msg["event"]
                if event == "lost":
                    finished = True
                    raise Unavailable(
                        f"The worker for model '{self.model}' stopped while serving this "
                        "request; it is being restarted. Retry the request.",
                        code="worker_crashed",
                    )
                finished = event in _TERMINAL
                yield msg
                if finished:
                    return
        finally:
            del self._pending[rid]
            self._admitted -= 1
            if not finished and not self._closed:
                # The caller went away (client disconnect): free the worker's slot.
                self._writer.write(encode({"op": "cancel", "id": rid}))

    async def ping(self, timeout: float) -> None:
        """Round trip to the worker's socket thread; raises on timeout or a lost worker."""
        rid = next(self._ids)
        queue: asyncio.Queue[Message] = asyncio.Queue()
        self._pending[rid] = queue
        try:
            self._writer.write(encode({"op": "ping", "id": rid}))
            async with asyncio.timeout(timeout):
                msg = await queue.get()
            if msg["event"] == "lost":
                raise Unavailable(f"The worker for model '{self.model}' is gone.")
        finally:
            del self._pending[rid]

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader_task

"""Worker-side plumbing every engine shares.

The socket thread calls `submit` and `cancel`; the engine's own thread takes requests
from `_waiting`, checks `_take_cancelled`, and sends events back with `_send` once `run`
has attached the channel.
"""

from __future__ import annotations

import queue
import threading

from inferplane.engines.worker.protocol import Channel, Message, Op


class EngineBase:
    def __init__(self) -> None:
        self._waiting: queue.Queue[tuple[int, Op]] = queue.Queue()  # (request id, op)
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()
        self._channel: Channel | None = None

    def submit(self, rid: int, op: Op) -> None:
        self._waiting.put((rid, op))

    def cancel(self, request_id: int) -> None:
        with self._lock:
            self._cancelled.add(request_id)

    def _take_cancelled(self, request_id: int) -> bool:
        with self._lock:
            if request_id in self._cancelled:
                self._cancelled.discard(request_id)
                return True
            return False

    def _take_all_cancelled(self) -> set[int]:
        with self._lock:
            taken, self._cancelled = self._cancelled, set()
        return taken

    def _send(self, msg: Message) -> None:
        assert self._channel is not None, "run() attaches the channel"
        self._channel.send(msg)

"""A fault-injecting HTTP/1.1 proxy on a real socket, in front of a real upstream.

Each request is either forwarded (one request per connection) or hit by a fault drawn
with the configured probabilities:
    error      answer 500 with an OpenAI-style error body
    reset      drop the connection before answering
    midstream  forward the response head (status and headers), then drop the connection
    late       forward the response head and the first SSE event (a token), then drop
    delay      wait `delay_s` before forwarding (a slow upstream)
What happened to each request is kept in `log`.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from dataclasses import dataclass, field

from tests.e2e.server import free_port


@dataclass
class Faults:
    error: float = 0.0
    reset: float = 0.0
    midstream: float = 0.0
    late: float = 0.0
    delay: float = 0.0
    delay_s: float = 0.0


@dataclass
class FaultProxy:
    upstream_port: int
    port: int = field(default_factory=free_port)
    faults: Faults = field(default_factory=Faults)
    log: Counter[str] = field(default_factory=Counter)
    seed: int = 7

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        # asyncio holds connection handlers weakly: one whose client left while it waits
        # out a delay would be collected mid-wait.
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            # Requests still held (a delay running out) end with the proxy.
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(server.wait_closed())
            self._loop.close()

    def _draw(self) -> str:
        f, x = self.faults, self._rng.random()
        for name, p in (
            ("error", f.error),
            ("reset", f.reset),
            ("midstream", f.midstream),
            ("late", f.late),
        ):
            if x < p:
                return name
            x -= p
        return "delay" if x < f.delay else "forward"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        up_writer: asyncio.StreamWriter | None = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = 0
            kept = [lines[0]]
            for line in lines[1:]:
                name = line.split(":", 1)[0].strip().lower()
                if name == "content-length":
                    length = int(line.split(":", 1)[1])
                if name in ("connection", "keep-alive") or not line:
                    continue
                kept.append(line)
            body = await reader.readexactly(length) if length else b""
            is_post = lines[0].startswith("POST")
            fault = self._draw() if is_post else "forward"
            self.log[fault] += 1
            if fault == "reset":
                writer.transport.abort()
                return
            if fault == "error":
                payload = b'{"error":{"message":"injected failure","type":"server_error"}}'
                writer.write(
                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
                writer.close()
                return
            if fault == "delay":
                await asyncio.sleep(self.faults.delay_s)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            request = "\r\n".join([*kept, "connection: close", "", ""]).encode() + body
            up_writer.write(request)
            await up_writer.drain()
            sent = b""
            while chunk := await up_reader.read(65536):
                if fault in ("midstream", "late"):
                    sent += chunk
                    head_end = sent.find(b"\r\n\r\n")
                    data = sent.find(b"data:", head_end)
                    cut = head_end + 4 if fault == "midstream" else sent.find(b"\n\n", data)
                    if head_end >= 0 and (fault == "midstream" or (data >= 0 and cut >= 0)):
                        writer.write(sent[: cut + (0 if fault == "midstream" else 2)])
                        await writer.drain()
                        writer.transport.abort()
                        up_writer.close()
                        return
                    continue
                writer.write(chunk)
                await writer.drain()
            if fault in ("midstream", "late"):  # not a stream: cut the body in half
                writer.write(sent[: len(sent) // 2])
                await writer.drain()
                writer.transport.abort()
            up_writer.close()
            writer.close()
        except (ConnectionError, asyncio.IncompleteReadError, OSError, asyncio.CancelledError):
            writer.transport.abort()
            if up_writer is not None:
                up_writer.transport.abort()

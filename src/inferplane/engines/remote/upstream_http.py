"""HTTP/1.1 to remote deployments: a keep-alive connection pool per deployment, answers
parsed by httptools (llhttp, the parser uvicorn serves with).

Hand-written, on asyncio's protocol API, because this is the gateway's hottest path:
behind a fast upstream, httpx's pool spent most of the gateway's CPU checking every
pooled connection on each request, and aiohttp's client cost about 90 us of CPU per
request against this one's 10 to 15 (measured on the 2-core Xeon, 16 concurrent
requests); `bench/gateway_overhead.py` shows what the whole gateway spends.

What it does: POST a JSON body and read the whole answer, or stream it as batches of
the lines in hand; GET for health checks; keep-alive with at most `max_connections`
requests at a time; TLS for https; a connect timeout, and a read timeout (the longest
silence while an answer is awaited). A pooled connection the upstream closed while it
sat idle is retried once on a fresh connection, when not one byte of the answer came.
An answer (a whole body, or all of one stream) is read up to `max_response_bytes`:
a 2xx answer longer than that fails as `UpstreamResponseTooLarge`, another status's body
(an error's words) is cut there; either way the connection is closed. Failures become
`UpstreamError`s (timeout, connection, too large) and never carry the API key.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httptools
import orjson

from inferplane.config.routes import RemoteDeployment
from inferplane.errors import UpstreamError, UpstreamResponseTooLarge

_IDLE_S = 30.0  # a pooled connection idle longer than this is closed, not reused
_HIGH_WATER = 1 << 20  # reading pauses while this much of an answer is unread
_FAILURES = (TimeoutError, OSError, httptools.HttpParserError)


class _Connection(asyncio.Protocol):
    """One connection; the answer to its current request, as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self.begin()

    def begin(self) -> None:
        """Forget the last answer: the next request is about to be sent."""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_done = self.complete = self.received = self.keep_alive = False
        self.error: BaseException | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed

    async def wait(self, timeout: float) -> None:
        """Until something arrives (the head, body, the end, a failure); TimeoutError
        after `timeout` seconds of silence."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def take(self) -> bytes:
        """The body received since the last call."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = exc
            self.close()
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and self.error is None:
            if self.head_done and self._until_close():
                self.complete = True  # a body delimited by the end of the connection
            else:
                self.error = exc or ConnectionResetError("The upstream closed the connection.")
        self._wake()

    # -- httptools callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        # Asked now: llhttp's answer is about the message it has just finished.
        self.keep_alive = self._parser.should_keep_alive()
        self.complete = True
        self._wake()

    def _until_close(self) -> bool:
        chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        return "content-length" not in self.headers and not chunked


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def read_all(batches: AsyncIterator[list[bytes]]) -> bytes:
    """The rest of a streamed answer, whole (an error's body)."""
    return b"\n".join([line async for batch in batches for line in batch])


@dataclass(frozen=True)
class Egress:
    """What every upstream request of this gateway carries, and where it may go: the
    loop-protection header, and the data policy's check of the address each new
    connection reached (a name that resolves to a metadata address is refused there)."""

    headers: Mapping[str, str] = field(default_factory=dict)
    allowed: Callable[[str], bool] = lambda address: True


ANY_EGRESS = Egress()  # no extra headers, any address (tests, tools)


class UpstreamHTTP:
    def __init__(
        self, spec: RemoteDeployment, headers: Mapping[str, str], egress: Egress = ANY_EGRESS
    ):
        self._name = spec.name
        url = urlsplit(spec.base_url.rstrip("/") + "/")
        https = url.scheme == "https"
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or (443 if https else 80)
        self._ssl = ssl.create_default_context() if https else None
        self._prefix = url.path
        host = self._host if url.port is None else f"{self._host}:{url.port}"
        fixed = {"host": host, "accept": "application/json, text/event-stream", **headers}
        fixed.update(egress.headers)
        self._allowed = egress.allowed
        self._head = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._read_timeout = spec.timeout_s
        self._max_bytes = spec.max_response_bytes
        self._connect_timeout = spec.connect_timeout_s
        self._slots = asyncio.Semaphore(spec.max_connections)
        self._idle: list[_Connection] = []
        self._closing = False

    async def aclose(self) -> None:
        self._closing = True
        while self._idle:
            self._idle.pop().close()

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Mapping[str, str], bytes]:
        """POST JSON, read the whole answer: (status, headers, body)."""
        try:
            async with self._slots:
                conn = await self._exchange(self._request("POST", path, body), self._read_timeout)
                try:
                    content = await self._body(conn)
                except BaseException:
                    conn.close()
                    raise
                self._release(conn)
                return conn.status, conn.headers, content
        except _FAILURES as exc:
            raise self.failure(exc) from exc

    @asynccontextmanager
    async def stream(
        self, path: str, body: dict[str, Any]
    ) -> AsyncIterator[tuple[int, Mapping[str, str], AsyncIterator[list[bytes]]]]:
        """POST JSON and stream the answer: (status, headers, batches of lines)."""
        try:
            async with self._slots:
                conn = await self._exchange(self._request("POST", path, body), self._read_timeout)
                try:
                    yield conn.status, conn.headers, self._lines(conn)
                finally:
                    # Reused only when the answer was read to its end.
                    if conn.complete:
                        self._release(conn)
                    else:
                        conn.close()
        except _FAILURES as exc:
            raise self.failure(exc) from exc

    async def get_ok(self, path: str, timeout_s: float) -> bool:
        """Whether a GET of `path` answers below 500 within `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                conn = await self._exchange(self._request("GET", path, None), timeout_s)
                try:
                    while not conn.complete and conn.error is None:
                        conn.take()  # dropped: a connection stops reading while it waits
                        await conn.wait(timeout_s)
                finally:
                    conn.take()
                    self._release(conn)
                return conn.status < 500
        except _FAILURES:
            return False

    def failure(self, exc: BaseException) -> UpstreamError:
        if isinstance(exc, TimeoutError):
            return UpstreamError(f"Deployment '{self._name}' timed out.", reason="timeout")
        return UpstreamError(
            f"Deployment '{self._name}' could not be reached ({type(exc).__name__}).",
            reason="connection",
        )

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> bytes:
        if body is None:
            head = f"{method} {self._prefix}{path} HTTP/1.1\r\n{self._head}\r\n"
            return head.encode("latin-1")
        data = orjson.dumps(body)
        head = (
            f"{method} {self._prefix}{path} HTTP/1.1\r\n{self._head}"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
        )
        return head.encode("latin-1") + data

    async def _exchange(self, request: bytes, timeout: float) -> _Connection:
        """Send `request`; the connection, once the answer's head has come."""
        for retry in (True, False):
            conn, reused = await self._connection()
            conn.begin()
            try:
                conn.send(request)
                while not conn.head_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(timeout)
                return conn
            except TimeoutError:
                conn.close()
                raise
            except OSError:
                conn.close()
                if retry and reused and not conn.received:
                    continue  # the upstream had closed it while it sat in the pool
                raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    async def _connection(self) -> tuple[_Connection, bool]:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < _IDLE_S:
                return conn, True
            conn.close()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            transport, conn = await loop.create_connection(
                _Connection,
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl is not None else None,
            )
        # uvloop may call connection_made only after create_connection has returned.
        conn.transport = transport
        peer = transport.get_extra_info("peername")
        if not peer or not self._allowed(str(peer[0])):
            conn.close()
            raise UpstreamError(
                f"Deployment '{self._name}' resolved to an address the policy refuses.",
                reason="connection",
            )
        return conn, False

    def _release(self, conn: _Connection) -> None:
        if conn.reusable() and not self._closing:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    async def _body(self, conn: _Connection) -> bytes:
        """The whole body, taken as it arrives: a connection stops reading while a
        megabyte of it waits untaken."""
        declared = conn.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            self._check_size(conn)
        parts: list[bytes] = []
        size = 0
        while True:
            data = conn.take()
            if data:
                parts.append(data)
                size += len(data)
                if size > self._max_bytes:
                    self._check_size(conn)
                    break
            elif conn.complete:
                break
            elif conn.error is not None:
                raise conn.error
            else:
                await conn.wait(self._read_timeout)
        return b"".join(parts)

    def _check_size(self, conn: _Connection) -> None:
        """An answer past `max_response_bytes`: a 2xx one fails; another's body is an
        error's words, and its start says enough (so that a failing upstream's long
        error page still counts against its health, as a failure)."""
        if conn.status < 300:
            raise UpstreamResponseTooLarge(self._name, self._max_bytes)

    async def _lines(self, conn: _Connection) -> AsyncIterator[list[bytes]]:
        """The answer's lines (without newlines), in batches: each batch holds every
        complete line that had arrived when it was taken, so a reader knows which lines
        it has in hand without waiting."""
        pending: list[bytes] = []  # a line still arriving, kept in parts: joined once
        size = 0
        while True:
            data = conn.take()
            if data:
                size += len(data)
                if size > self._max_bytes:
                    self._check_size(conn)
                    pending.append(data)
                    break
                *lines, rest = data.split(b"\n")
                if lines:
                    lines[0] = b"".join([*pending, lines[0]])
                    pending.clear()
                    yield [line.rstrip(b"\r") for line in lines]
                if rest:
                    pending.append(rest)
            elif conn.complete:
                break
            elif conn.error is not None:
                raise conn.error
            else:
                await conn.wait(self._read_timeout)
        if pending:
            yield [b"".join(pending)]

"""The gateway's HTTP/1.1 connections: uvicorn's httptools protocol, with limits.

uvicorn bounds neither a request's head nor the time a client takes to send it: a
256 MB header was taken whole (httptools concatenates a header value piece by piece),
and idle or half-sent connections stayed open. Here every limit of `HttpLimits` is
checked as bytes arrive, before the app is started for the request (so before
authentication):

    head size     request line + headers over `max_header_bytes`: 431; the bytes fed
                  while the head is incomplete are counted after each feed, and the
                  parser is fed no more once over, so memory stays bounded
    header count  more than `max_headers`: 431
    request line  a target over `max_request_line_bytes`: 414
    head time     connection start (or a keep-alive request's first byte) to complete
                  headers over `header_timeout_s`: 408
    body time     complete headers to complete body over `body_timeout_s`: dropped
    write time    writing paused by flow control for `write_timeout_s`: dropped
    per client    more than `max_connections_per_client` open from one IP: 429
    keep-alive    uvicorn's own idle timer, set to `keep_alive_timeout_s`

A refusal is answered with the OpenAI error envelope and `connection: close`; then
reading stops, the write side is shut and the connection is aborted `_LINGER_S` later
(closing at once, with input unread, would reset it before the client may have read the
answer). Unlike nginx's lingering close, what the client still sends is not read and
discarded meanwhile: discarding up to 1 MB per refusal, a client sending 10 MB headers
back to back made the others' median latency 3.5x (bench/http_limits.py), while a
paused connection costs nothing but its place in the per-client count. One over the cap is
closed at once (nothing was received, and lingering it would hold a socket uncounted).

A drop aborts the connection (a close would wait for the client to read what is
buffered): the app sees `http.disconnect`, so a streaming request is cancelled and its
upstream connection released. A refusal while an earlier response is being written (or
pipelined requests wait for theirs) cannot be answered, as the answer would land inside
that response: it is a drop.

Everything else (keep-alive, pipelining, flow control) is uvicorn's.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from inferplane.config.settings import HttpLimits
from inferplane.telemetry.ids import unique_id

log = logging.getLogger(__name__)

_LINGER_S = 1.0


class _Stop(Exception):
    """Raised in a parser callback once a limit has refused the request: the parser
    stops there (feed_data raises HttpParserCallbackError) instead of going on through
    the rest of what was fed."""


def gateway_protocol(limits: HttpLimits) -> type[GatewayHttpProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`: `limits` enforced, open
    connections counted per client IP over every connection of the server using it."""
    per_client: Counter[str] = Counter()

    class Protocol(GatewayHttpProtocol):
        _limits = limits
        _per_client = per_client

    return Protocol


class GatewayHttpProtocol(HttpToolsProtocol):
    """One connection. Use `gateway_protocol(limits)`: it sets the two class fields."""

    _limits: ClassVar[HttpLimits]
    _per_client: ClassVar[Counter[str]]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.timeout_keep_alive = self._limits.keep_alive_timeout_s  # type: ignore[assignment]
        # The gateway serves no WebSockets, and an upgraded connection would leave this
        # protocol: its limits and its place in the per-client count.
        self.ws_protocol_class = None
        self._peer: str | None = None  # set while counted against the per-client cap
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._in_head = False
        self._head_bytes = 0  # url and headers the parser has reported (exact)
        self._head_fed = 0  # bytes fed while the head stayed incomplete
        self._head_count = 0
        self._closing = False  # refused or dropped: nothing more is parsed or answered

    # -- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("header", self._limits.header_timeout_s, self._header_timeout)
        cap = self._limits.max_connections_per_client
        if cap and self.client is not None:
            peer = self.client[0]
            if self._per_client[peer] >= cap:
                message = f"Over {cap} open connections."
                self._refuse(429, "too_many_connections", message, linger=False)
                return
            self._per_client[peer] += 1
            self._peer = peer

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._peer is not None:
            self._per_client[self._peer] -= 1
            if not self._per_client[self._peer]:
                del self._per_client[self._peer]
            self._peer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, except that a limit may stop the parser in the middle of `data`
        (`_Stop`: a refused head's rest is not parsed, header by header)."""
        if self._closing:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # no WebSockets here (see __init__)
        except httptools.HttpParserError:
            if not self._closing:  # else `_Stop`, raised in a callback
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        # Counted after the feed: a packet that completes the head (and carries the
        # start of the body) is not mistaken for a long head. A pipelined request that
        # begins inside `data` is charged all of it (an overestimate, by one read).
        if self._in_head:
            self._head_fed += len(data)
            if self._head_fed > self._limits.max_header_bytes:
                self._refuse_large_head()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._arm("write", self._limits.write_timeout_s, lambda: self._drop("write_timeout"))

    def resume_writing(self) -> None:
        super().resume_writing()
        self._disarm("write")

    # -- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = self._head_fed = self._head_count = 0
        if "header" not in self._timers:  # a keep-alive request: its first byte
            self._arm("header", self._limits.header_timeout_s, self._header_timeout)

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        limit = self._limits.max_request_line_bytes
        if len(self.url) + len(url) > limit:
            self._refuse(414, "request_line_too_long", f"The request line is over {limit} bytes.")
            raise _Stop()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._head_count > self._limits.max_headers:
            limit = self._limits.max_headers
            self._refuse(431, "too_many_headers", f"The request has over {limit} headers.")
            raise _Stop()
        if self._head_bytes > self._limits.max_header_bytes:
            self._refuse_large_head()
            raise _Stop()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm("header")
        super().on_headers_complete()
        self._arm("body", self._limits.body_timeout_s, self._body_timeout)

    def on_message_complete(self) -> None:
        self._disarm("body")
        super().on_message_complete()

    # -- limits -------------------------------------------------------------------------

    def _refuse_large_head(self) -> None:
        limit = self._limits.max_header_bytes
        self._refuse(431, "header_too_large", f"The request headers are over {limit} bytes.")

    def _header_timeout(self) -> None:
        if self.flow.read_paused:  # uvicorn stopped reading (a request is queued): our wait
            self._arm("header", self._limits.header_timeout_s, self._header_timeout)
            return
        limit = self._limits.header_timeout_s
        self._refuse(408, "request_timeout", f"The request headers took over {limit} s.")

    def _body_timeout(self) -> None:
        if self.flow.read_paused:  # the app has not taken the body yet: not the client's delay
            self._arm("body", self._limits.body_timeout_s, self._body_timeout)
            return
        self._drop("body_timeout")

    def _busy(self) -> bool:
        """Whether a response is being written or waits to be (pipelined requests)."""
        cycle = self.cycle
        return bool(self.pipeline) or (cycle is not None and not cycle.response_complete)

    def _refuse(self, status: int, code: str, message: str, linger: bool = True) -> None:
        """Answer `status` with an error envelope, then close (after `_LINGER_S`)."""
        if self.transport.is_closing():
            return  # uvicorn is closing it already (after a 400, or `connection: close`)
        if self._busy():
            self._drop(code)
            return
        self._closing = True
        self._in_head = False
        self._disarm_all()
        client = self.client[0] if self.client else "-"
        log.info("http: refused a request from %s with %d (%s)", client, status, code)
        self.transport.write(self._answer(status, code, message))
        if not linger:
            self.transport.close()
            return
        self.flow.pause_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm("linger", _LINGER_S, self.transport.abort)

    def send_400_response(self, msg: str) -> None:
        """A request the parser cannot read (bad method, version, header syntax, framing):
        the OpenAI envelope like every other answer, not uvicorn's plain text."""
        if self._busy():
            self._drop("invalid_http")
            return
        self._closing = True
        self._disarm_all()
        self.transport.write(self._answer(400, "invalid_http", msg))
        self.transport.close()

    def _answer(self, status: int, code: str, message: str) -> bytes:
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
        body = orjson.dumps({"error": error})
        head = [STATUS_LINE[status]]
        head += [k + b": " + v + b"\r\n" for k, v in self.server_state.default_headers]
        head.append(b"x-request-id: req_%s\r\n" % unique_id().encode())
        head.append(b"content-type: application/json\r\nconnection: close\r\n")
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        return b"".join(head) + body

    def _drop(self, reason: str) -> None:
        """Close now: abort, as a close would wait for the client to read what is buffered."""
        self._closing = True
        self._disarm_all()
        client = self.client[0] if self.client else "-"
        log.info("http: dropped a connection from %s (%s)", client, reason)
        self.transport.abort()

    # -- timers -------------------------------------------------------------------------

    def _arm(self, name: str, delay: float, callback: Callable[[], object]) -> None:
        self._disarm(name)
        self._timers[name] = self.loop.call_later(delay, self._fire, name, callback)

    def _fire(self, name: str, callback: Callable[[], object]) -> None:
        del self._timers[name]
        callback()

    def _disarm(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _disarm_all(self) -> None:
        for name in list(self._timers):
            self._disarm(name)

"""The gateway's HTTP protocol on a real uvicorn server (uvloop, 127.0.0.1) in front of
the gateway's middleware and a tiny ASGI app, driven with raw sockets: what is refused
(and that the app never saw it), what is closed after which timeout, the per-client
cap, and that ordinary keep-alive and pipelined requests still work."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
import uvicorn
import uvloop

from inferplane.api.http_protocol import gateway_protocol
from inferplane.api.middleware import GatewayMiddleware
from inferplane.config.settings import HttpLimits
from inferplane.telemetry.metrics import Metrics

T = 0.5  # every timeout of the limits under test, in seconds
WAIT = 10.0  # the longest a test waits for anything
LIMITS = HttpLimits(
    max_header_bytes=4096,
    max_headers=20,
    max_request_line_bytes=1024,
    header_timeout_s=T,
    body_timeout_s=T,
    keep_alive_timeout_s=T,
    max_connections_per_client=64,
    write_timeout_s=T,
)


class App:
    """Answers with the size of the body it read; `/stream` streams until the client goes."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.stream_ended = threading.Event()
        self.metrics = Metrics()  # the gateway middleware's, in front of this app

    def requests(self, status: int) -> float:
        """Requests the middleware counted with `status` (outside any route)."""
        labels = {"route": "unmatched", "model": "", "status": str(status)}
        return self.metrics.registry.get_sample_value("inferplane_requests_total", labels) or 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        if scope["path"] == "/stream":
            await self._stream(receive, send)
            return
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"%d" % size
        headers = [(b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _stream(self, receive: Any, send: Any) -> None:
        async def until_gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        gone = asyncio.ensure_future(until_gone())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        chunk = b"x" * 65536
        for _ in range(4096):  # 256 MB at most
            if gone.done():
                break
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        gone.cancel()
        self.stream_ended.set()


@contextmanager
def serving(limits: HttpLimits = LIMITS) -> Iterator[tuple[App, int]]:
    app = App()
    middleware = GatewayMiddleware(app, metrics=app.metrics, max_body_bytes=1 << 20)
    config = uvicorn.Config(
        middleware, http=gateway_protocol(limits), ws="none", lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=lambda: uvloop.run(server.serve(sockets=[sock])))
    thread.start()
    try:
        deadline = time.monotonic() + WAIT
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.01)
        yield app, port
    finally:
        server.should_exit = True
        thread.join(WAIT)
        sock.close()


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[App, int]]:
    with serving() as running:
        yield running


class Client:
    """A raw HTTP/1.1 client socket (from `source`, an address of the loopback)."""

    def __init__(self, port: int, source: str = "127.0.0.1", rcvbuf: int = 0) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(WAIT)
        self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        self.buffer = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next response, with a content-length (status 0: the connection closed)."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._read():
                return 0, {}, b""
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        size = int(headers["content-length"])
        while len(self.buffer) < size and self._read():
            pass
        body, self.buffer = self.buffer[:size], self.buffer[size:]
        return int(lines[0].split()[1]), headers, body

    def closed(self) -> bool:
        """Whether the server closes the connection (EOF or reset) within WAIT."""
        try:
            while self._read():
                pass
        except ConnectionResetError:
            pass
        return True

    def _read(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)


def _error(body: bytes) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["param"] is None
    return error


GET = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"


def test_keep_alive_and_pipelined_requests_still_work(server: tuple[App, int]) -> None:
    app, port = server
    with Client(port) as client:
        for _ in range(2):
            client.send(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
            assert client.response()[::2] == (200, b"5")
        client.send(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n")
        assert [client.response()[0] for _ in range(2)] == [200, 200]
    assert app.paths[-2:] == ["/a", "/b"]


@pytest.mark.parametrize("pieces", [1, 16])
def test_a_head_over_the_byte_limit_gets_431_and_never_reaches_the_app(
    server: tuple[App, int], pieces: int
) -> None:
    app, port = server
    head = b"GET /big HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 6000 + b"\r\n\r\n"
    with Client(port) as client:
        step = len(head) // pieces + 1
        for i in range(0, len(head), step):  # in pieces: counted while incomplete
            client.send(head[i : i + step])
            time.sleep(0.01 if pieces > 1 else 0)
        status, headers, body = client.response()
        assert (status, headers["connection"]) == (431, "close")
        assert _error(body)["code"] == "header_too_large"
        assert client.closed()
    assert "/big" not in app.paths


def test_a_huge_header_is_refused_before_it_is_all_sent(server: tuple[App, int]) -> None:
    _, port = server
    with Client(port) as client:
        client.send(b"GET /huge HTTP/1.1\r\nx-huge: ")
        sent = 0
        try:
            while sent < 64 << 20:  # the server stops listening long before this
                sent += client.sock.send(b"a" * 65536)
        except OSError:
            pass  # reset, after the answer
        assert sent < 16 << 20
        assert client.response()[0] == 431


def test_too_many_headers_get_431(server: tuple[App, int]) -> None:
    app, port = server
    many = b"".join(b"x-h%d: v\r\n" % i for i in range(30))
    with Client(port) as client:
        client.send(b"GET /many HTTP/1.1\r\n" + many + b"\r\n")
        status, _, body = client.response()
        assert (status, _error(body)["code"]) == (431, "too_many_headers")
    assert "/many" not in app.paths


def test_a_long_request_line_gets_414(server: tuple[App, int]) -> None:
    app, port = server
    with Client(port) as client:
        client.send(b"GET /" + b"p" * 2000 + b" HTTP/1.1\r\nhost: x\r\n\r\n")
        status, _, body = client.response()
        assert (status, _error(body)["code"]) == (414, "request_line_too_long")
    assert not any(p.startswith("/ppp") for p in app.paths)


@pytest.mark.parametrize("sent", [b"", b"GET /slow HTTP/1.1\r\nhost: x\r\n"])
def test_a_head_not_complete_in_time_gets_408(server: tuple[App, int], sent: bytes) -> None:
    app, port = server
    with Client(port) as client:
        started = time.monotonic()
        client.send(sent)
        status, _, body = client.response()
        assert (status, _error(body)["code"]) == (408, "request_timeout")
        assert T * 0.8 <= time.monotonic() - started < T + 5
        assert client.closed()
    assert "/slow" not in app.paths


def test_a_keep_alive_connection_idle_past_its_timeout_is_closed(
    server: tuple[App, int],
) -> None:
    _, port = server
    with Client(port) as client:
        client.send(GET)
        assert client.response()[0] == 200
        started = time.monotonic()
        assert client.sock.recv(1) == b""
        assert time.monotonic() - started < T + 5


def test_a_body_not_complete_in_time_closes_the_connection(server: tuple[App, int]) -> None:
    app, port = server
    with Client(port) as client:
        client.send(b"POST /half HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        started = time.monotonic()
        assert client.closed()
        assert time.monotonic() - started < T + 5
    deadline = time.monotonic() + WAIT
    while not app.requests(499):  # the middleware saw the client leave mid-body
        assert time.monotonic() < deadline, "the request never ended"
        time.sleep(0.01)
    assert "/half" not in app.paths  # and did not serve the truncated body as a request


def test_a_client_that_stops_reading_a_stream_is_dropped(server: tuple[App, int]) -> None:
    app, port = server
    app.stream_ended.clear()
    with Client(port, rcvbuf=16384) as client:
        client.send(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        assert app.stream_ended.wait(WAIT)  # never read: the write timeout ended it
        assert client.closed()  # what was buffered, then the end (of a truncated stream)
        assert len(client.buffer) < 64 << 20


def test_connections_per_client_are_capped_per_address() -> None:
    long = WAIT * 2  # no connection of this test times out
    limits = LIMITS.model_copy(
        update={"max_connections_per_client": 4, "header_timeout_s": long}
        | {"keep_alive_timeout_s": long}
    )
    with serving(limits) as (_, port), ExitStack() as stack:
        held = [stack.enter_context(Client(port, "127.0.0.2")) for _ in range(4)]
        for client in held:  # each served once: counted for sure
            client.send(GET)
            assert client.response()[0] == 200
        with Client(port, "127.0.0.2") as extra:
            extra.send(GET)
            status, _, body = extra.response()
            assert (status, _error(body)["code"]) == (429, "too_many_connections")
        with Client(port) as other:  # another address is not affected
            other.send(GET)
            assert other.response()[0] == 200
        held.pop().sock.close()  # a place frees up once the server has seen it close
        deadline = time.monotonic() + WAIT
        while True:
            with Client(port, "127.0.0.2") as again:
                again.send(GET)
                if again.response()[0] == 200:
                    break
            assert time.monotonic() < deadline, "the closed connection was never uncounted"
            time.sleep(0.05)

"""The remote deployments' HTTP client against a small server on a real socket."""

from __future__ import annotations

import asyncio

import pytest

from inferplane.config.routes import RemoteDeployment
from inferplane.engines.remote.upstream_http import Egress, UpstreamHTTP
from inferplane.errors import UpstreamError
from tests.unit.loopback import Loopback, read_request

BODY = b'{"ok": true}'


class Server(Loopback):
    """Answers each request with BODY (or a chunked SSE stream for "stream" bodies);
    with `close_after`, closes every connection after that many answers."""

    def __init__(self, close_after: int | None = None):
        self.connections = 0
        self.close_after = close_after

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = 0
        try:
            while True:
                _, body = await read_request(reader)
                if b"stream" in body:
                    events = b"".join(b"data: %d\n\n" % i for i in range(3)) + b"data: [DONE]\n\n"
                    chunk = b"%x\r\n%s\r\n" % (len(events), events)
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                        + chunk
                        + b"0\r\n\r\n"
                    )
                else:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BODY) + BODY
                    )
                await writer.drain()
                answered += 1
                if self.close_after is not None and answered >= self.close_after:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def _client(port: int, **kw: object) -> UpstreamHTTP:
    spec = RemoteDeployment(
        name="t",
        engine="openai_compatible",
        base_url=f"http://127.0.0.1:{port}/v1",
        model="m",
        **kw,
    )
    return UpstreamHTTP(spec, {"authorization": "Bearer x"})


def test_connections_are_kept_alive_and_reused() -> None:
    asyncio.run(_connections_are_kept_alive_and_reused())


async def _connections_are_kept_alive_and_reused() -> None:
    async with Server() as server:
        http = _client(server.port)
        for _ in range(5):
            assert await http.post("chat/completions", {"x": 1}) == (
                200,
                {"content-length": "12"},
                BODY,
            )
        async with http.stream("chat/completions", {"stream": True}) as (status, _, lines):
            got = [line async for batch in lines for line in batch if line]
        assert status == 200 and got == [b"data: 0", b"data: 1", b"data: 2", b"data: [DONE]"]
        assert await http.post("chat/completions", {"x": 1}) == (
            200,
            {"content-length": "12"},
            BODY,
        )
        assert server.connections == 1
        await http.aclose()


def test_a_connection_closed_while_pooled_is_retried_on_a_fresh_one() -> None:
    asyncio.run(_a_connection_closed_while_pooled_is_retried_on_a_fresh_one())


async def _a_connection_closed_while_pooled_is_retried_on_a_fresh_one() -> None:
    async with Server(close_after=1) as server:
        http = _client(server.port)
        for _ in range(3):
            status, _, body = await http.post("chat/completions", {"x": 1})
            assert (status, body) == (200, BODY)
            await asyncio.sleep(0.05)  # the server's close arrives while it sits idle
        assert server.connections == 3
        await http.aclose()


def test_silence_past_the_read_timeout_and_refused_connections_fail_cleanly() -> None:
    asyncio.run(_silence_past_the_read_timeout_and_refused_connections_fail_cleanly())


async def _silence_past_the_read_timeout_and_refused_connections_fail_cleanly() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(1)
            await asyncio.sleep(0.5)
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with pytest.raises(UpstreamError) as slow:
        await _client(port, timeout_s=0.2).post("chat/completions", {"x": 1})
    assert slow.value.reason == "timeout"
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0.6)  # the silent handler finishes
    with pytest.raises(UpstreamError) as refused:
        await _client(port).post("chat/completions", {"x": 1})
    assert refused.value.reason == "connection"


def test_egress_rules_apply_to_every_connection() -> None:
    asyncio.run(_egress_rules_apply_to_every_connection())


async def _egress_rules_apply_to_every_connection() -> None:
    spec = RemoteDeployment(
        name="t", engine="openai_compatible", base_url="http://localhost:1/v1", model="m"
    )
    async with Server() as server:
        spec = spec.model_copy(update={"base_url": f"http://127.0.0.1:{server.port}/v1"})
        seen: list[str] = []

        def allowed(address: str) -> bool:
            seen.append(address)
            return False

        refused = UpstreamHTTP(spec, {}, Egress(allowed=allowed))
        with pytest.raises(UpstreamError, match="policy refuses"):
            await refused.post("chat/completions", {"x": 1})
        assert seen == ["127.0.0.1"]  # the address the connection reached
        ok = UpstreamHTTP(spec, {}, Egress(headers={"x-inferplane-via": "abc"}))
        assert (await ok.post("chat/completions", {"x": 1}))[0] == 200
        await refused.aclose()
        await ok.aclose()

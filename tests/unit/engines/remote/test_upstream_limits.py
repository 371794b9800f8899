"""How much of an upstream's answer the HTTP client reads, against a real socket: long
answers whole (past the megabyte at which a connection stops reading until its reader
takes the body), up to `max_response_bytes`, never an endless stream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from inferplane.config.routes import RemoteDeployment
from inferplane.engines.remote.upstream_http import UpstreamHTTP
from inferplane.errors import UpstreamResponseTooLarge

MIB = 1 << 20
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _json(size: int) -> bytes:
    """A JSON object of `size` bytes."""
    return b'{"text": "' + b"x" * (size - 12) + b'"}'


async def _request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(h.split(b":")[1])
        for h in head.split(b"\r\n")
        if h.lower().startswith(b"content-length")
    )
    await reader.readexactly(length)


def _answer(body: bytes, *, status: bytes = b"200 OK", chunked: bool = False) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await _request(reader)
                if chunked:
                    writer.write(b"HTTP/1.1 %s\r\ntransfer-encoding: chunked\r\n\r\n" % status)
                    for i in range(0, len(body), 65536):
                        part = body[i : i + 65536]
                        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    writer.write(b"0\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 %s\r\ncontent-length: %d\r\n\r\n" % (status, len(body)))
                    writer.write(body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle


EVENT = b'data: {"choices": [{"delta": {"content": "x"}}]}'


async def _endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An SSE stream that never ends (until the client goes)."""
    await _request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    line = EVENT + b"\n\n"
    events, at = line * 100, 0
    try:
        while True:
            part = events[at : at + 777]  # lines cut across chunks, as reads may cut them
            at = (at + len(part)) % len(line)
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _client(port: int, **kw: object) -> UpstreamHTTP:
    spec = RemoteDeployment.model_validate(
        {
            "name": "big",
            "engine": "openai_compatible",
            "base_url": f"http://127.0.0.1:{port}/v1",
            "model": "m",
            "timeout_s": 10,
            **kw,
        }
    )
    return UpstreamHTTP(spec, {})


def test_answers_of_several_megabytes_are_read_whole() -> None:
    asyncio.run(_answers_of_several_megabytes_are_read_whole())


async def _answers_of_several_megabytes_are_read_whole() -> None:
    body = _json(5 * MIB)
    for chunked in (False, True):
        server, port = await _serve(_answer(body, chunked=chunked))
        http = _client(port)
        for _ in range(2):  # and the connection is reused after it
            status, _, content = await http.post("chat/completions", {"x": 1})
            assert (status, len(content), content == body) == (200, 5 * MIB, True)
        await http.aclose()
        server.close()
        await server.wait_closed()


def test_answers_past_the_limit_fail_as_too_large() -> None:
    asyncio.run(_answers_past_the_limit_fail_as_too_large())


async def _answers_past_the_limit_fail_as_too_large() -> None:
    for chunked in (False, True):  # declared (content-length) or found out while reading
        server, port = await _serve(_answer(_json(2 * MIB), chunked=chunked))
        http = _client(port, max_response_bytes=MIB)
        with pytest.raises(UpstreamResponseTooLarge) as info:
            await http.post("chat/completions", {"x": 1})
        err = info.value
        assert (err.reason, err.status, err.code) == (
            "too_large",
            502,
            "upstream_response_too_large",
        )
        assert err.limit_bytes == MIB and not err.same_deployment_may_succeed and err.retryable
        await http.aclose()
        server.close()
        await server.wait_closed()


def test_an_endless_stream_ends_at_the_limit() -> None:
    asyncio.run(_an_endless_stream_ends_at_the_limit())


async def _an_endless_stream_ends_at_the_limit() -> None:
    server, port = await _serve(_endless)
    http = _client(port, max_response_bytes=MIB)
    received = 0
    with pytest.raises(UpstreamResponseTooLarge):
        async with http.stream("chat/completions", {"stream": True}) as (status, _, batches):
            assert status == 200
            async for batch in batches:
                received += sum(len(line) + 1 for line in batch)
                assert received <= MIB
                assert {line for line in batch if line} <= {EVENT}
    assert received > 0
    await http.aclose()
    server.close()
    await server.wait_closed()


def test_a_long_error_page_is_cut_not_too_large() -> None:
    asyncio.run(_a_long_error_page_is_cut_not_too_large())


async def _a_long_error_page_is_cut_not_too_large() -> None:
    """A failing upstream stays a failure (it counts against its health) however long
    its error page: the status decides, the body's start is kept."""
    for chunked in (False, True):
        page = b"<html>" + b"x" * (2 * MIB)
        server, port = await _serve(_answer(page, status=b"500 Oops", chunked=chunked))
        http = _client(port, max_response_bytes=MIB)
        status, _, content = await http.post("chat/completions", {"x": 1})
        assert status == 500 and MIB < len(content) < 2 * MIB and page.startswith(content)
        await http.aclose()
        server.close()
        await server.wait_closed()


def test_the_limit_defaults_to_32_mib_and_is_bounded() -> None:
    spec = {"name": "d", "engine": "anthropic", "base_url": "http://h/v1", "model": "m"}
    assert RemoteDeployment.model_validate(spec).max_response_bytes == 32 * MIB
    for wrong in (100, 2 << 30):
        with pytest.raises(ValueError, match="max_response_bytes"):
            RemoteDeployment.model_validate(spec | {"max_response_bytes": wrong})

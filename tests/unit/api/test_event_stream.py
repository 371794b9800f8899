"""The SSE response as an ASGI app, driven with recording `send`/`receive` callables:
what goes out in which write, and that a client leaving stops the generation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from inferplane.api.openai.generation import EventStreamResponse
from inferplane.errors import InferplaneError
from inferplane.events import Finished, GenerationEvent, Started, TextDelta

SCOPE: dict[str, Any] = {"type": "http", "method": "POST", "path": "/", "headers": []}


def _fmt(event: GenerationEvent) -> bytes:
    if isinstance(event, TextDelta):
        return b"data: %s\n\n" % event.text.encode()
    if isinstance(event, Finished):
        return b"data: finish\n\n"
    return b"data: role\n\n"


class Client:
    """Records what the response sends; `receive` answers a disconnect once `leave` is set."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.wrote = asyncio.Event()
        self.leave = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body":
            self.wrote.set()

    async def receive(self) -> dict[str, Any]:
        await self.leave.wait()
        return {"type": "http.disconnect"}

    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


def test_events_in_hand_share_a_write_and_none_waits_for_the_next() -> None:
    asyncio.run(_events_in_hand_share_a_write())


async def _events_in_hand_share_a_write() -> None:
    client = Client()
    closed = asyncio.Event()

    async def events() -> AsyncIterator[GenerationEvent]:
        try:
            yield TextDelta("a", 1, more=True)
            yield TextDelta("b", 2, more=True)
            yield TextDelta("c", 3)
            # The next token is not in hand: what came before must be out already.
            await asyncio.wait_for(client.wrote.wait(), 5)
            yield TextDelta("d", 4)
            yield Finished("stop", 2, 4)
        finally:
            closed.set()

    response = EventStreamResponse(Request(SCOPE, client.receive), events(), _fmt)
    await response(SCOPE, client.receive, client.send)  # type: ignore[arg-type]
    assert closed.is_set()
    assert [m["type"] for m in client.sent] == [
        "http.response.start",
        "http.response.body",
        "http.response.body",
        "http.response.body",
    ]
    assert client.sent[0]["status"] == 200
    assert dict(client.sent[0]["headers"])[b"content-type"].startswith(b"text/event-stream")
    assert client.bodies() == [
        b"data: role\n\ndata: a\n\ndata: b\n\ndata: c\n\n",
        b"data: d\n\n",
        # The end goes out with the last write, after the generation closed.
        b"data: finish\n\ndata: [DONE]\n\n",
    ]
    assert [m["more_body"] for m in client.sent[1:]] == [True, True, False]


def test_a_failure_mid_stream_is_an_error_event_then_done() -> None:
    asyncio.run(_a_failure_mid_stream())


async def _a_failure_mid_stream() -> None:
    client = Client()

    async def events() -> AsyncIterator[GenerationEvent]:
        yield TextDelta("a", 1, more=True)
        raise InferplaneError("The upstream failed mid-stream.", code="upstream_error")

    response = EventStreamResponse(Request(SCOPE, client.receive), events(), _fmt)
    await response(SCOPE, client.receive, client.send)  # type: ignore[arg-type]
    (body,) = client.bodies()
    assert body.startswith(b"data: role\n\ndata: a\n\ndata: {")
    assert b'"code":"upstream_error"' in body and body.endswith(b"data: [DONE]\n\n")


def test_a_client_leaving_stops_the_generation() -> None:
    asyncio.run(_a_client_leaving())


async def _a_client_leaving() -> None:
    client = Client()
    closed = asyncio.Event()

    async def events() -> AsyncIterator[GenerationEvent]:
        try:
            yield Started(1)
            client.leave.set()
            await asyncio.sleep(30)  # a generation that would go on for long
            yield TextDelta("never", 1)
        finally:
            closed.set()

    response = EventStreamResponse(Request(SCOPE, client.receive), events(), _fmt)
    task = asyncio.current_task()
    assert task is not None
    async with asyncio.timeout(5):
        await response(SCOPE, client.receive, client.send)  # type: ignore[arg-type]
    assert closed.is_set()
    assert task.cancelling() == 0  # the cancellation it used was taken back
    assert b"never" not in b"".join(client.bodies())

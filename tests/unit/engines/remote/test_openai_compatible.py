"""The OpenAI-compatible engine's stream against a small upstream on a real socket: which
events say that more follows at once (`TextDelta.more`), and that none waits for more."""

from __future__ import annotations

import asyncio
import json

from inferplane.config.routes import RemoteDeployment
from inferplane.engines.remote.openai_compatible import OpenAICompatibleEngine
from inferplane.events import Finished, GenerationEvent, Started, TextDelta


def _event(obj: object) -> bytes:
    data = b"data: " + json.dumps(obj).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _delta(text: str) -> bytes:
    return _event({"choices": [{"index": 0, "delta": {"content": text}}]})


class BurstUpstream:
    """Streams three deltas, waits until `release` is set, then two more, a usage-only
    chunk (no event) and [DONE]: two bursts, as a real upstream's reads would come."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.port = 0

    async def __aenter__(self) -> BurstUpstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(h.split(b":")[1])
            for h in head.split(b"\r\n")
            if h.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(_delta("a") + _delta("b") + _delta("c") + _event({"choices": []}))
        await writer.drain()
        await self.release.wait()
        usage = {"prompt_tokens": 3, "completion_tokens": 5}
        end = _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        tail = _event({"choices": [], "usage": usage})
        done = b"data: [DONE]\n\n"
        finish = b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done)
        writer.write(_delta("d") + _delta("e") + end + tail + finish)
        await writer.drain()
        writer.close()


def test_texts_in_hand_together_say_more_and_the_last_of_a_read_does_not() -> None:
    asyncio.run(_texts_in_hand_together())


async def _texts_in_hand_together() -> None:
    async with BurstUpstream() as upstream:
        spec = RemoteDeployment(
            name="u",
            engine="openai_compatible",
            base_url=f"http://127.0.0.1:{upstream.port}/v1",
            model="m",
        )
        engine = OpenAICompatibleEngine(spec, None)
        got: list[GenerationEvent] = []
        stream = engine.request(
            "chat.completions", {"messages": []}, {}, stream=True, prompt_estimate=1
        )
        async for event in stream:
            got.append(event)
            if isinstance(event, TextDelta) and event.text == "c":
                # "c" ended the first read: it must come without waiting for the second.
                assert not event.more
                upstream.release.set()
        await engine.aclose()
    assert got[0] == Started(1)
    texts = [(e.text, e.more) for e in got if isinstance(e, TextDelta)]
    # "e" says more: [DONE] came in the same read, so `Finished` follows at once.
    assert texts == [("a", True), ("b", True), ("c", False), ("d", True), ("e", True)]
    assert got[-1] == Finished("stop", 3, 5)

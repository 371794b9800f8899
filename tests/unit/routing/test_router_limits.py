"""The attempt loop with real OpenAI-compatible deployments on real sockets: an answer
over a deployment's `max_response_bytes` is not a mark against its health."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from inferplane.config.routes import RemoteDeployment
from inferplane.engines.remote.openai_compatible import OpenAICompatibleEngine
from inferplane.errors import UpstreamResponseTooLarge
from inferplane.events import Finished, GenerationEvent, TextDelta
from inferplane.routing.breaker import CLOSED, CircuitBreaker
from inferplane.routing.deployments import Alias, Deployment
from inferplane.routing.router import Attempts, attempts
from tests.unit.loopback import Loopback, read_request


def _completion(text: str) -> bytes:
    return json.dumps(
        {
            "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        }
    ).encode()


class Upstream(Loopback):
    """Answers every chat completion with `text`; counts the requests."""

    def __init__(self, text: str):
        self.body = _completion(text)
        self.requests = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_request(reader)
                self.requests += 1
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(self.body))
                writer.write(self.body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _deployment(name: str, port: int) -> Deployment:
    spec = RemoteDeployment(
        name=name,
        engine="openai_compatible",
        base_url=f"http://127.0.0.1:{port}/v1",
        model="m",
        max_response_bytes=64 * 1024,
    )
    # One failure would open the breaker.
    return Deployment(name, spec, CircuitBreaker(1, 60.0), OpenAICompatibleEngine(spec, None))


def _run(alias: Alias, dep: Deployment) -> AsyncIterator[GenerationEvent]:
    assert isinstance(dep.engine, OpenAICompatibleEngine)
    messages = [{"role": "user", "content": "hi"}]
    return dep.engine.request(
        "chat.completions", {"messages": messages}, {}, stream=False, prompt_estimate=1
    )


async def _serve(alias: Alias, plan: list[Deployment], state: Attempts) -> list[GenerationEvent]:
    return [e async for e in attempts(alias, [(alias, d) for d in plan], _run, state)]


def test_answers_too_large_leave_the_breaker_closed_and_go_elsewhere() -> None:
    asyncio.run(_answers_too_large_leave_the_breaker_closed())


async def _answers_too_large_leave_the_breaker_closed() -> None:
    async with Upstream("x" * 100_000) as verbose, Upstream("ok") as brief:
        big, small = _deployment("verbose", verbose.port), _deployment("brief", brief.port)
        alias = Alias("a", [big, small], max_attempts=4, backoff_base_s=0)
        for _ in range(3):
            state = Attempts()
            events = await _serve(alias, [big, small], state)
            assert [e.text for e in events if isinstance(e, TextDelta)] == ["ok"]
            assert isinstance(events[-1], Finished)
            assert state.count == 2 and state.served_by == (alias, small)
        assert (big.breaker.state, big.breaker.consecutive_failures, big.failures) == (CLOSED, 0, 0)
        assert verbose.requests == 3  # asked once a request, never again within it

        # Alone, it is not asked again either: the caller gets the 502 at once.
        state = Attempts()
        with pytest.raises(UpstreamResponseTooLarge) as info:
            await _serve(alias, [big], state)
        assert state.count == 1 and info.value.code == "upstream_response_too_large"
        assert big.breaker.state == CLOSED and big.breaker.allow()
        for dep in (big, small):
            await dep.engine.aclose()

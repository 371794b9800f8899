"""The runtime opens and closes in numbered, timed steps, and its shutdown waits for a
replaced deployment to finish its request (within the grace, not past it).

Real parts: the SQLite store and its migrations, the ledger, the route table, the
OpenAI-compatible adapter and its connection pool, against an upstream on loopback that
holds its answer until the test lets it go."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest

from inferplane.config import Settings
from inferplane.config.routes import RemoteDeployment
from inferplane.config.settings import ServerSettings
from inferplane.engines.remote.base import RemoteEngine
from inferplane.events import Finished, GenerationEvent
from inferplane.routing.deployments import Alias, Deployment
from inferplane.routing.router import Attempts, attempts
from inferplane.routing.store import RuntimeDeployment
from inferplane.routing.strategies import RouteRequest
from inferplane.runtime import Runtime
from inferplane.telemetry.metrics import Metrics

OPENING = [
    "store and migrations",
    "keys snapshot and admin key",
    "prices",
    "usage ledger",
    "limits and budgets",
    "model workers",
    "routes and health checks",
    "response cache",
    "services",
]
CLOSING = [
    "refuse new work",
    "response cache's last stores",
    "workers",
    "router and draining deployments",
    "usage ledger flush",
    "change notices",
    "redis",
    "store",
]
ROUTER_STEP = "shutdown 4/8 router and draining deployments"
ANSWER = {
    "choices": [{"message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
}


class HeldUpstream:
    """An OpenAI-compatible upstream on 127.0.0.1 that answers a chat completion only once
    `release` is set, and notes when a client closes its (keep-alive) connection."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.client_closed = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self.url = ""

    async def start(self) -> HeldUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    async def aclose(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
                await reader.readexactly(int(length.group(1)) if length else 0)
                self.arrived.set()
                await self.release.wait()
                body = json.dumps(ANSWER).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.client_closed.set()
        finally:
            writer.close()


def _settings(data_dir: Path, grace_s: float) -> Settings:
    return Settings(
        data_dir=data_dir,
        admin_key="ipk-test-admin",
        models=[],
        server=ServerSettings(shutdown_grace_s=grace_s),
    )


def _remote(url: str, weight: float = 1.0) -> RuntimeDeployment:
    spec = RemoteDeployment(
        name="held", engine="openai_compatible", base_url=url, model="m", weight=weight
    )
    return RuntimeDeployment("remote", spec)


async def _ask(runtime: Runtime) -> list[GenerationEvent]:
    """One non-streaming chat request through the router's attempt loop."""
    router = runtime.routes.router
    alias = router.get("remote")
    assert alias is not None

    def run(_owner: Alias, dep: Deployment) -> Any:
        assert isinstance(dep.engine, RemoteEngine)
        messages = [{"role": "user", "content": "Hello"}]
        return dep.engine.request(
            "chat.completions", {"messages": messages}, {}, stream=False, prompt_estimate=3
        )

    plan = router.plan(alias, RouteRequest())
    return [event async for event in attempts(alias, plan, run, Attempts())]


async def _replaced_while_in_flight(
    runtime: Runtime, upstream: HeldUpstream
) -> asyncio.Task[list[GenerationEvent]]:
    """A request in flight on a runtime deployment that is then replaced (its weight
    changed: a new deployment, the old one draining)."""
    await runtime.routes.apply([_remote(upstream.url)])
    request = asyncio.create_task(_ask(runtime))
    await asyncio.wait_for(upstream.arrived.wait(), 10)
    await runtime.routes.apply([_remote(upstream.url, weight=2.0)])
    return request


def _steps(caplog: pytest.LogCaptureFixture, kind: str) -> list[tuple[int, int, str]]:
    pattern = re.compile(rf"{kind} (\d+)/(\d+) (.+?)(?:: \d+\.\d\d s|: overran .*)$")
    found = []
    for record in caplog.records:
        match = pattern.match(record.getMessage())
        if match and record.name == "inferplane.runtime":
            found.append((int(match[1]), int(match[2]), match[3]))
    return found


def _took(caplog: pytest.LogCaptureFixture, step: str) -> float:
    for record in caplog.records:
        message = record.getMessage()
        if message.startswith(step + ": "):
            return float(re.findall(r"(\d+\.\d\d) s", message)[0])
    raise AssertionError(f"no log line for {step}")


def test_steps_are_numbered_timed_and_in_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inferplane.runtime")

    async def scenario() -> None:
        runtime = await Runtime.open(_settings(tmp_path, 5.0), Metrics())
        assert runtime.accepting
        await runtime.aclose()
        assert not runtime.accepting

    asyncio.run(scenario())
    assert _steps(caplog, "start-up") == [(i, 9, n) for i, n in enumerate(OPENING, 1)]
    assert _steps(caplog, "shutdown") == [(i, 8, n) for i, n in enumerate(CLOSING, 1)]


def test_shutdown_waits_for_a_replaced_deployment_to_drain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inferplane.runtime")
    held_s = 1.5  # three of the drain's 0.5 s polls

    async def scenario() -> list[GenerationEvent]:
        upstream = await HeldUpstream().start()
        runtime = await Runtime.open(_settings(tmp_path, 30.0), Metrics())
        try:
            request = await _replaced_while_in_flight(runtime, upstream)
            closing = asyncio.create_task(runtime.aclose())
            await asyncio.sleep(held_s)
            assert not closing.done(), "shutdown returned with a request in flight"
            assert not upstream.client_closed.is_set()
            upstream.release.set()
            events = await asyncio.wait_for(request, 10)
            await asyncio.wait_for(closing, 10)
            # Only the drain closes the replaced deployment's pool (the router no longer
            # holds it): its idle connection is closed once its request has ended.
            await asyncio.wait_for(upstream.client_closed.wait(), 5)
            return events
        finally:
            await upstream.aclose()

    events = asyncio.run(scenario())
    assert isinstance(events[-1], Finished) and events[-1].finish_reason == "stop"
    assert _took(caplog, ROUTER_STEP) >= held_s
    assert [n for _, _, n in _steps(caplog, "shutdown")] == CLOSING


def test_a_drain_past_the_grace_is_cancelled_and_the_rest_still_closes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inferplane.runtime")
    grace_s = 1.0

    async def scenario() -> float:
        upstream = await HeldUpstream().start()
        runtime = await Runtime.open(_settings(tmp_path, grace_s), Metrics())
        try:
            request = await _replaced_while_in_flight(runtime, upstream)
            started = time.monotonic()
            await asyncio.wait_for(runtime.aclose(), 10)
            took = time.monotonic() - started
            upstream.release.set()  # the request itself was never the runtime's to end
            await asyncio.wait_for(request, 10)
            return took
        finally:
            await upstream.aclose()

    # aclose returned while the upstream still held the request: the drain was cancelled
    # (not waited out), after the grace.
    took = asyncio.run(scenario())
    assert took >= grace_s
    overran = [r for r in caplog.records if r.getMessage().startswith(ROUTER_STEP + ": overran")]
    assert len(overran) == 1 and overran[0].levelno == logging.WARNING
    # Every later step ran all the same.
    assert [n for _, _, n in _steps(caplog, "shutdown")] == CLOSING

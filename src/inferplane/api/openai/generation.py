"""Shared by chat and text completions: start a generation, collect it, or stream it as SSE."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from fastapi import Request
from fastapi.responses import StreamingResponse

from inferplane.api.openai.common import queue_deadline, usage
from inferplane.api.services import services
from inferplane.cache.responses import Directives
from inferplane.errors import InferplaneError
from inferplane.pipeline.context import RequestContext
from inferplane.pipeline.events import Finished, GenerationEvent, Started, TextDelta
from inferplane.routing.strategies import RouteRequest
from inferplane.tenancy.records import Principal

log = logging.getLogger(__name__)


@dataclass
class Generation:
    events: AsyncIterator[GenerationEvent]
    prompt_tokens: int
    version: str  # of the deployment serving it


class GenerationRequest(Protocol):
    model: str
    user: str | None
    stream: bool

    def prompt_input(self) -> dict[str, Any]: ...
    def size_hint(self) -> int: ...
    def sampling(self) -> dict[str, Any]: ...


async def start(
    request: Request, principal: Principal, body: GenerationRequest, endpoint: str
) -> Generation:
    """Resolve the model, prepare the prompt and run until the worker accepted it.

    Everything that can go wrong before the first token (unknown model, overload, prompt
    too long) raises here, so it becomes a plain HTTP error, not an in-stream one.
    """
    svc = services(request)
    alias = svc.inference.route(principal, body.model)
    request.state.model = alias.id
    ctx = RequestContext(
        request.state.request_id,
        principal,
        endpoint,
        user=body.user,
        deadline=queue_deadline(request),
    )
    events = svc.inference.generate(
        ctx,
        alias,
        body.prompt_input(),
        body.size_hint(),
        body.sampling(),
        stream=body.stream,
        directives=Directives.parse(request.headers.get("cache-control")),
        route=RouteRequest(
            data_class=request.headers.get("x-inferplane-data-class"),
            region=request.headers.get("x-inferplane-region"),
        ),
    )
    try:
        first = await anext(events)
    finally:
        request.state.ratelimit_headers = ctx.ratelimit_headers
        request.state.attempts = ctx.attempts
        request.state.deployment = ctx.deployment or "none"
        request.state.model_version = ctx.model_version or "none"
        if ctx.dropped_turns:
            request.state.dropped_turns = ctx.dropped_turns
        if ctx.cache is not None:
            request.state.cache = ctx.cache
            if ctx.cache_age is not None:
                request.state.cache_age = ctx.cache_age
            if ctx.cache_score is not None:
                request.state.cache_score = ctx.cache_score
    assert isinstance(first, Started)
    return Generation(events, first.prompt_tokens, ctx.model_version or "none")


async def collect(request: Request, generation: Generation) -> tuple[str, Finished]:
    """The whole generation, for a non-streaming answer. A caller that disconnects stops
    it: the model's slot is freed at once (as for a stream) and the request is billed
    for what was generated, with status 499.

    The generation is collected in the request's own task; a watcher task cancels it
    when the client leaves (one task per request instead of two and an asyncio.wait:
    about 4 % of the gateway's CPU per request behind a fast upstream, profiled)."""
    task = asyncio.current_task()
    assert task is not None
    left = finished = False

    def on_leave(watcher: asyncio.Future[None]) -> None:
        nonlocal left
        if finished or watcher.cancelled() or watcher.exception() is not None:
            return
        left = True
        task.cancel()  # `_collect`'s `finally` closes the generation: the worker cancels

    watcher = asyncio.ensure_future(_disconnected(request))
    watcher.add_done_callback(on_leave)
    try:
        return await _collect(generation)
    except asyncio.CancelledError:
        if not left:
            raise
        task.uncancel()
        raise ClientGone() from None
    finally:
        finished = True  # a callback already scheduled must not cancel what follows
        watcher.cancel()


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body was read already: what comes next on
    the connection is `http.disconnect`)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class ClientGone(InferplaneError):
    """The caller disconnected before a non-streaming answer was ready (nginx's 499)."""

    status = 499
    code = "client_closed_request"

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the answer was ready.")


async def _collect(generation: Generation) -> tuple[str, Finished]:
    parts: list[str] = []
    try:
        async for event in generation.events:
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, Finished):
                return "".join(parts), event
    finally:
        # Closing runs the pipeline's settle-and-record step before we answer.
        await generation.events.aclose()  # type: ignore[attr-defined]
    raise InferplaneError("The generation ended without finishing.")


ChunkFormatter = Callable[[GenerationEvent], Iterable[dict[str, Any]]]


@dataclass
class Chunks:
    """Builds the stream chunks of one response; the endpoint supplies the choice bodies."""

    base: dict[str, Any]  # id, object, created, model, system_fingerprint
    include_usage: bool

    def chunk(self, choice: dict[str, Any] | None) -> dict[str, Any]:
        out = {**self.base, "choices": [] if choice is None else [{"index": 0, **choice}]}
        if self.include_usage:
            out["usage"] = None
        return out

    def finish(self, choice: dict[str, Any], event: Finished) -> Iterator[dict[str, Any]]:
        yield self.chunk({**choice, "logprobs": None, "finish_reason": event.finish_reason})
        if self.include_usage:
            last = self.chunk(None)
            last["usage"] = usage(event.prompt_tokens, event.completion_tokens)
            yield last


def sse_response(generation: Generation, format_event: ChunkFormatter) -> StreamingResponse:
    return StreamingResponse(
        _sse(generation.events, format_event),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


def _data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _sse(events: AsyncIterator[GenerationEvent], fmt: ChunkFormatter) -> AsyncIterator[bytes]:
    try:
        for chunk in fmt(Started(0)):
            yield _data(chunk)
        async for event in events:
            for chunk in fmt(event):
                yield _data(chunk)
    except InferplaneError as exc:
        # Headers are sent: the failure travels as an error event, then [DONE].
        yield _data(exc.body())
    except Exception:
        log.exception("stream failed")
        yield _data(InferplaneError("The server had an error while streaming.").body())
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    yield b"data: [DONE]\n\n"

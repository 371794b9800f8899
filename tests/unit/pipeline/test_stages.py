"""Input and output stages in the request path: input stages run in order, after the
request is counted and before its tokens are, and may change or refuse it; output
stages wrap the events, in order."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from inferplane.engines.interface import GenerationInput
from inferplane.errors import PermissionDenied
from inferplane.events import GenerationEvent, Started, TextDelta
from inferplane.limits.policy import Limits
from inferplane.pipeline.context import RequestContext
from inferplane.pipeline.stages import run_inputs, run_outputs
from tests.unit.pipeline.support import (
    ScriptedEngine,
    alias,
    chat,
    context,
    deployment,
    principal,
    words,
    world,
)
from tests.unit.scripts import Serve


class Replace:
    """An input stage that rewrites the final user turn (a redaction, say) and notes
    what it saw."""

    active = True

    def __init__(self, name: str, old: str, new: str):
        self.name, self.old, self.new = name, old, new
        self.seen: list[str] = []

    async def inspect(self, ctx: RequestContext, request: GenerationInput) -> GenerationInput:
        *rest, last = request.prompt["messages"]
        self.seen.append(last["content"])
        turn = {**last, "content": last["content"].replace(self.old, self.new)}
        return dataclasses.replace(request, prompt={**request.prompt, "messages": [*rest, turn]})


class Refuse:
    """An input stage that refuses every request (a guardrail that blocks)."""

    name = "block"
    active = True

    async def inspect(self, ctx: RequestContext, request: GenerationInput) -> GenerationInput:
        raise PermissionDenied("Blocked by policy.", code="guardrail_blocked")


class Suffix:
    """An output stage that appends to every text, noting the texts it was given."""

    def __init__(self, name: str, suffix: str):
        self.name, self._suffix = name, suffix
        self.seen: list[str] = []

    async def watch(
        self, ctx: RequestContext, events: AsyncIterator[GenerationEvent]
    ) -> AsyncIterator[GenerationEvent]:
        async for event in events:
            if isinstance(event, TextDelta):
                self.seen.append(event.text)
                event = dataclasses.replace(event, text=event.text + self._suffix)
            yield event


def test_input_stages_run_in_order_each_on_the_last_ones_request() -> None:
    first, second = Replace("a", "hello", "hi"), Replace("b", "hi", "hey")
    out = asyncio.run(run_inputs((first, second), context(), chat("say hello")))
    assert (first.seen, second.seen) == (["say hello"], ["say hi"])
    assert out.prompt["messages"][-1]["content"] == "say hey"


def test_output_stages_wrap_the_events_in_order() -> None:
    async def events() -> AsyncIterator[GenerationEvent]:
        yield Started(1)
        yield TextDelta("x", 1)

    async def main() -> list[GenerationEvent]:
        wrapped = run_outputs((inner, outer), context(), events())
        return [e async for e in wrapped]

    inner, outer = Suffix("inner", "1"), Suffix("outer", "2")
    assert asyncio.run(main()) == [Started(1), TextDelta("x12", 1)]
    assert (inner.seen, outer.seen) == (["x"], ["x1"])


def test_a_refusing_input_stage_leaves_the_request_counted_and_charged_nothing(
    tmp_path: Path,
) -> None:
    engine = ScriptedEngine("local", Serve(), counts=True)
    target = alias(deployment(engine))
    one_at_a_time = Limits(rpm=10, tpm=10_000, max_parallel=1)

    async def main() -> None:
        async with world(tmp_path, target, inputs=(Refuse(),)) as w:
            ctx = context(principal(one_at_a_time))
            with pytest.raises(PermissionDenied):
                await w.generate(ctx, target)
            assert engine.prepares == [] and engine.generates == []
            assert ctx.outcome.ratelimit_headers["x-ratelimit-remaining-requests"] == "9"
            # Counted as a request (the probe finds 8 left); its concurrency slot free
            # (the probe is admitted under max_parallel=1); no tokens held.
            window = w.window(one_at_a_time)
            assert window["x-ratelimit-remaining-requests"] == "8"
            assert window["x-ratelimit-remaining-tokens"] == "10000"
            assert w.spent() == 0 and w.budget_free()
            # Refused before it was metered: no usage to record.
            assert await w.records() == []

    asyncio.run(main())


def test_the_engines_see_the_request_as_the_input_stages_changed_it(tmp_path: Path) -> None:
    # The first deployment counts (and sees the change); the second, routed first, serves.
    counter = ScriptedEngine("local", counts=True)
    remote = ScriptedEngine("remote", Serve())
    target = alias(deployment(counter, weight=0), deployment(remote))

    async def main() -> None:
        stage = Replace("redact", "Alice", "[name] [surname]")
        async with world(tmp_path, target, inputs=(stage,)) as w:
            ctx = context()
            await w.generate(ctx, target, chat("greet Alice", max_tokens=8))
            changed = "greet [name] [surname]"
            assert [r.prompt["messages"][-1]["content"] for r in counter.prepares] == [changed]
            (asked,) = remote.generates
            assert asked.prepared.payload["messages"][-1]["content"] == changed
            # Admitted with the changed prompt's count.
            prompt = words({"messages": [{"content": changed}]})
            assert asked.prepared.prompt_tokens == prompt == 3
            (rec,) = await w.records()
            assert rec["prompt_tokens"] == prompt

    asyncio.run(main())


def test_the_cache_keys_the_request_as_the_input_stages_changed_it(tmp_path: Path) -> None:
    """A grounding stage adds what it retrieved: the same question grounded on other
    documents is another request, which the model must answer again."""
    engine = ScriptedEngine("remote", Serve(("old",)), Serve(("new",)))
    target = alias(deployment(engine))
    stage = Replace("ground", "{docs}", "v1")

    async def main() -> None:
        async with world(tmp_path, target, inputs=(stage,)) as w:
            await w.generate(context(request_id="a"), target, chat("answer from {docs}"))
            await w.settled()
            stage.new = "v2"  # the knowledge base changed
            ctx = context(request_id="b")
            events = await w.generate(ctx, target, chat("answer from {docs}"))
            assert ctx.outcome.cache == "miss"
            assert [e.text for e in events if isinstance(e, TextDelta)] == ["new"]

    asyncio.run(main())


def test_output_stages_see_every_answer_served_or_replayed(tmp_path: Path) -> None:
    """A cache keeps the model's own answer; the output stages (moderation, restoring
    pseudonyms) see it on its way to each caller, the replayed one's too."""
    engine = ScriptedEngine("remote", Serve(("Hello",)))
    target = alias(deployment(engine))

    async def main() -> None:
        stage = Suffix("mark", "!")
        async with world(tmp_path, target, outputs=(stage,)) as w:
            served = await w.generate(context(request_id="a"), target)
            await w.settled()
            ctx = context(request_id="b")
            replayed = await w.generate(ctx, target)
            assert ctx.outcome.cache == "hit"
            texts = [
                [e.text for e in got if isinstance(e, TextDelta)] for got in (served, replayed)
            ]
            assert texts == [["Hello!"], ["Hello!"]]
            assert stage.seen == ["Hello", "Hello"]

    asyncio.run(main())

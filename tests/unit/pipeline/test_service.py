"""`InferenceService.generate` end to end, with scripted engines and the real limiter,
budgets, response cache and usage ledger (on SQLite): what the request's `Outcome`
says, what it is charged, and its one ledger record however it ends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from pathlib import Path

import pytest

from inferplane.errors import InvalidRequest, Unavailable, UpstreamError
from inferplane.events import Finished, GenerationEvent, Started, TextDelta
from inferplane.limits.policy import Limits
from tests.unit.pipeline.support import (
    KEY_LIMITS,
    SAMPLING,
    ScriptedEngine,
    World,
    alias,
    chat,
    context,
    cost,
    deployment,
    principal,
    world,
)
from tests.unit.scripts import FailAfter, FailBefore, Queued, Script, Serve


def _texts(events: Sequence[GenerationEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextDelta)]


# The ledger record's fields a test compares whole (ids and timings vary).
_FIELDS = (
    "request_id",
    "org_id",
    "team_id",
    "key_id",
    "user",
    "endpoint",
    "model",
    "deployment",
    "model_version",
    "prompt_tokens",
    "completion_tokens",
    "status",
    "cache_hit",
)


def test_a_served_request_writes_its_outcome_and_its_record(tmp_path: Path) -> None:
    # The first deployment counts the prompt (a tokenizer) and fails before its first
    # token; the second (no tokenizer) serves it.
    local = ScriptedEngine(
        "local", FailBefore(Unavailable("worker down")), counts=True, dropped_turns=1
    )
    remote = ScriptedEngine("remote", Serve())
    target = alias(deployment(local), deployment(remote, weight=0))
    request = chat("say hello to me", max_tokens=8)

    async def main() -> None:
        async with world(tmp_path, target) as w:
            ctx = context()
            events = await w.generate(ctx, target, request)
            assert _texts(events) == ["Hello", " world"]
            assert events[0] == Started(4) and events[-1] == Finished("stop", 4, 2)
            out = ctx.outcome
            assert (out.model, out.deployment, out.model_version) == ("m", "remote", "remote-v1")
            assert (out.attempts, out.cache, out.dropped_turns) == (2, "miss", 1)
            # Admitted with the counted prompt (4 words) and max_tokens (8).
            assert out.ratelimit_headers["x-ratelimit-remaining-requests"] == "9"
            assert out.ratelimit_headers["x-ratelimit-remaining-tokens"] == str(10_000 - 12)
            # The engine without a tokenizer was told the admitted count, and who calls.
            (asked,) = remote.generates
            assert asked.prepared.prompt_tokens == 4
            assert asked.prepared.payload == request.prompt
            assert asked.sampling == SAMPLING
            assert (asked.caller.share, asked.caller.weight, asked.caller.scope) == (
                "team:t1",
                2.0,
                "org:o1",
            )
            (rec,) = await w.records()
            assert w.spent() == rec["cost_nusd"] == cost(4, 2)
            # Settled to what it used: 6 tokens stay in the window, not 12.
            assert w.window()["x-ratelimit-remaining-tokens"] == str(10_000 - 6)
        assert rec["ttft_ms"] is not None and rec["latency_ms"] >= rec["ttft_ms"] > 0
        assert rec["price_id"] is not None
        assert {k: rec[k] for k in _FIELDS} == {
            "request_id": "req-1",
            "org_id": "o1",
            "team_id": "t1",
            "key_id": "k1",
            "user": "alice",
            "endpoint": "chat.completions",
            "model": "m",
            "deployment": "remote",
            "model_version": "remote-v1",
            "prompt_tokens": 4,
            "completion_tokens": 2,
            "status": 200,
            "cache_hit": False,
        }

    asyncio.run(main())


def test_a_cache_hit_is_replayed_without_the_engine(tmp_path: Path) -> None:
    engine = ScriptedEngine("remote", Serve())  # scripted once: a second call fails
    target = alias(deployment(engine))
    request = chat(max_tokens=8)
    prompt = request.estimate_tokens()

    async def main() -> None:
        async with world(tmp_path, target, hit_cost_fraction=0.5) as w:
            served = await w.generate(context(request_id="first"), target, request)
            await w.settled()
            ctx = context(request_id="second")
            replayed = await w.generate(ctx, target, request)
            assert len(engine.generates) == 1
            assert replayed == [
                Started(prompt),
                TextDelta("Hello", 0, more=True),
                TextDelta(" world", 0, more=True),
                Finished("stop", prompt, 2),
            ]
            assert _texts(replayed) == _texts(served)
            out = ctx.outcome
            assert (out.cache, out.cache_age, out.cache_score) == ("hit", 0, None)
            assert (out.deployment, out.model_version) == ("remote", "remote-v1")
            first, second = await w.records()
            # Billed the configured fraction of what the answer cost.
            assert second["cost_nusd"] == cost(prompt, 2) // 2
            assert w.spent() == cost(prompt, 2) + cost(prompt, 2) // 2
            # A hit ran no model: only the first request's tokens stay in the window.
            assert w.window()["x-ratelimit-remaining-tokens"] == str(10_000 - prompt - 2)
        assert (second["request_id"], second["status"], second["cache_hit"]) == ("second", 200, 1)
        assert (second["deployment"], second["model_version"]) == ("remote", "remote-v1")
        assert second["ttft_ms"] is not None
        assert (first["cache_hit"], first["cost_nusd"]) == (0, cost(prompt, 2))

    asyncio.run(main())


def test_max_tokens_over_the_cap_is_refused_before_admission(tmp_path: Path) -> None:
    engine = ScriptedEngine("local", Serve(), counts=True)
    target = alias(deployment(engine))
    capped = Limits(rpm=10, tpm=10_000, max_tokens=8)

    async def main() -> None:
        async with world(tmp_path, target) as w:
            ctx = context(principal(capped))
            with pytest.raises(InvalidRequest) as info:
                await w.generate(ctx, target, chat(max_tokens=9))
            assert info.value.code == "max_tokens_exceeded"
            assert engine.prepares == []  # no tokenizer worked for it
            assert ctx.outcome.ratelimit_headers == {}
            # Not counted: the probe is the window's only request.
            assert w.window(capped)["x-ratelimit-remaining-requests"] == "9"
            assert await w.records() == []

    asyncio.run(main())


def test_without_max_tokens_the_engine_is_asked_for_the_cap(tmp_path: Path) -> None:
    engine = ScriptedEngine("remote", Serve())
    target = alias(deployment(engine))
    capped = Limits(rpm=10, tpm=10_000, max_tokens=8)

    async def main() -> None:
        async with world(tmp_path, target) as w:
            ctx = context(principal(capped))
            await w.generate(ctx, target, chat())
            (asked,) = engine.generates
            assert asked.prepared.max_tokens == 8
            assert asked.prepared.payload["max_tokens"] == 8
            prompt = chat().estimate_tokens()
            tokens = ctx.outcome.ratelimit_headers["x-ratelimit-remaining-tokens"]
            assert tokens == str(10_000 - prompt - 8)

    asyncio.run(main())


def test_a_consumer_leaving_after_the_first_token_is_charged_what_was_used(
    tmp_path: Path,
) -> None:
    engine = ScriptedEngine("remote", Serve(("a", "b", "c")))
    target = alias(deployment(engine))
    request = chat(max_tokens=8)
    prompt = request.estimate_tokens()

    async def main() -> None:
        async with world(tmp_path, target) as w:
            ctx = context()
            events = await w.stream(ctx, target, request)
            async with aclosing(events):
                async for event in events:
                    if isinstance(event, TextDelta):
                        break
            assert engine.closed == 1  # the model's stream stopped with the reading
            (rec,) = await w.records()
            assert (rec["status"], rec["prompt_tokens"], rec["completion_tokens"]) == (
                499,
                prompt,
                1,
            )
            assert rec["cost_nusd"] == w.spent() == cost(prompt, 1)
            assert rec["deployment"] == ctx.outcome.deployment == "remote"
            assert w.window()["x-ratelimit-remaining-tokens"] == str(10_000 - prompt - 1)

    asyncio.run(main())


def test_a_caller_leaving_while_queued_is_recorded_and_charged_nothing(tmp_path: Path) -> None:
    one_at_a_time = Limits(rpm=10, tpm=10_000, max_parallel=1)

    async def main() -> None:
        queued = Queued(asyncio.Event())
        engine = ScriptedEngine("local", queued, counts=True)
        target = alias(deployment(engine))
        async with world(tmp_path, target) as w:
            ctx = context(principal(one_at_a_time))
            task = asyncio.create_task(w.generate(ctx, target))
            await queued.waiting.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            (rec,) = await w.records()
            assert (rec["status"], rec["cost_nusd"], rec["prompt_tokens"]) == (499, 0, 0)
            assert w.spent() == 0 and w.budget_free()
            # Its concurrency slot is free again, and it holds no tokens.
            assert w.window(one_at_a_time)["x-ratelimit-remaining-tokens"] == "10000"

    asyncio.run(main())


# --- one ledger record, however the request ends -------------------------------------

Ending = Callable[[World], Awaitable[None]]


async def _served(w: World) -> None:
    await w.generate(context(), w.router.aliases["m"])


async def _stops_at_finished(w: World) -> None:
    """As the HTTP layer reads a non-streaming answer: up to `Finished`, then closes."""
    events = await w.stream(context(), w.router.aliases["m"])
    async with aclosing(events):
        async for event in events:
            if isinstance(event, Finished):
                break


async def _leaves_after_first_token(w: World) -> None:
    events = await w.stream(context(), w.router.aliases["m"])
    async with aclosing(events):
        await anext(events)
        await anext(events)


async def _fails(w: World) -> None:
    with pytest.raises((Unavailable, UpstreamError)):
        await w.generate(context(), w.router.aliases["m"])


async def _replayed(w: World) -> None:
    await w.generate(context(request_id="first"), w.router.aliases["m"])
    await w.settled()
    await w.generate(context(), w.router.aliases["m"])


async def _replay_stops_at_finished(w: World) -> None:
    await w.generate(context(request_id="first"), w.router.aliases["m"])
    await w.settled()
    await _stops_at_finished(w)


_DOWN = Unavailable("worker down")
_BROKEN = UpstreamError("connection reset", reason="connection")


@pytest.mark.parametrize(
    ("script", "ending", "status", "charged"),
    [
        ((Serve(),), _served, 200, True),
        ((Serve(),), _stops_at_finished, 200, True),
        ((Serve(),), _leaves_after_first_token, 499, True),
        ((FailBefore(_DOWN), FailBefore(_DOWN), FailBefore(_DOWN)), _fails, 503, False),
        ((FailAfter(("a",), _BROKEN),), _fails, 502, False),
        ((Serve(),), _replayed, 200, True),
        ((Serve(),), _replay_stops_at_finished, 200, True),
    ],
    ids=[
        "served",
        "stops-at-finished",
        "leaves",
        "fails-before",
        "fails-after",
        "cache-hit",
        "cache-hit-stops-at-finished",
    ],
)
def test_one_ledger_record_however_the_request_ends(
    tmp_path: Path, script: tuple[Script, ...], ending: Ending, status: int, charged: bool
) -> None:
    engine = ScriptedEngine("remote", *script)
    target = alias(deployment(engine))

    async def main() -> None:
        async with world(tmp_path, target) as w:
            await ending(w)
            records = [r for r in await w.records() if r["request_id"] == "req-1"]
            assert [r["status"] for r in records] == [status]
            assert (records[0]["cost_nusd"] > 0) is charged
            assert engine.script == []  # every scripted attempt was made
            assert w.budget_free()  # no reservation outlived the request

    asyncio.run(main())


def test_a_request_no_deployment_served_is_recorded_as_served_by_none(tmp_path: Path) -> None:
    first = ScriptedEngine("a", FailBefore(Unavailable("down")))
    second = ScriptedEngine("b", FailBefore(Unavailable("down")))
    target = alias(deployment(first), deployment(second, weight=0), max_attempts=2)

    async def main() -> None:
        async with world(tmp_path, target) as w:
            ctx = context()
            with pytest.raises(Unavailable):
                await w.generate(ctx, target)
            assert (ctx.outcome.attempts, ctx.outcome.deployment) == (2, None)
            (rec,) = await w.records()
        assert (rec["deployment"], rec["model_version"], rec["ttft_ms"]) == ("none", "none", None)
        assert (rec["status"], rec["cost_nusd"]) == (503, 0)

    asyncio.run(main())


def test_key_limits_stay_as_the_limiter_left_them(tmp_path: Path) -> None:
    """The rate-limit headers of a request are the limiter's own numbers."""
    target = alias(deployment(ScriptedEngine("remote", Serve(), Serve())))

    async def main() -> None:
        async with world(tmp_path, target) as w:
            first, second = context(request_id="a"), context(request_id="b")
            await w.generate(first, target)
            await w.generate(second, target)
            assert first.outcome.ratelimit_headers["x-ratelimit-remaining-requests"] == "9"
            assert second.outcome.ratelimit_headers["x-ratelimit-remaining-requests"] == "8"
            assert second.outcome.ratelimit_headers["x-ratelimit-limit-requests"] == str(
                KEY_LIMITS.rpm
            )

    asyncio.run(main())

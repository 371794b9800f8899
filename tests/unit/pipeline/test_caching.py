"""The cache stages: a request's lookup, its hit or miss in the outcome, a hit replayed
as a generation and billed as one, an answer stored only when it may be."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from inferplane.cache.responses import Answer, Directives, Hit, Lookup, ResponseCache
from inferplane.events import Finished, Started, TextDelta
from inferplane.pipeline.admission import Admission, rate_scopes
from inferplane.pipeline.caching import CacheStage
from inferplane.pipeline.context import RequestContext
from inferplane.pipeline.metering import Meter
from inferplane.telemetry.metrics import Metrics
from tests.unit.pipeline.support import (
    ScriptedEngine,
    World,
    alias,
    context,
    cost,
    deployment,
    world,
)

TARGET = alias(deployment(ScriptedEngine("d")))
VERSIONS = frozenset({"d-v1"})
REQUEST: dict[str, Any] = {
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 8,
    "temperature": 0.0,
}
DONE = Finished("stop", 10, 2)
PLAIN = Directives()  # no Cache-Control


@asynccontextmanager
async def _stage(tmp_path: Path) -> AsyncIterator[tuple[World, CacheStage]]:
    async with world(tmp_path, TARGET, hit_cost_fraction=0.5) as w:
        yield w, CacheStage(w.cache, Meter(w.ledger, w.metrics))


def _lookup(stage: CacheStage, ctx: RequestContext, directives: Directives = PLAIN) -> Lookup:
    lookup = stage.lookup(ctx, TARGET, REQUEST, VERSIONS, directives)
    assert lookup is not None
    return lookup


async def _admitted(w: World, ctx: RequestContext) -> Admission:
    scopes = rate_scopes(ctx.principal, "m", TARGET.limits)
    return await w.admitter.admit(ctx, "m", scopes, 10, 8)


async def _store(w: World, stage: CacheStage, ctx: RequestContext, lookup: Lookup) -> None:
    """An answer served by `d` (as routing notes it), through the recorder."""
    recorder = stage.recorder(lookup)
    assert recorder is not None
    recorder.parts += ["Hel", "lo"]
    await recorder.finished(ctx, await _admitted(w, ctx), DONE)
    await w.settled()


def test_without_a_cache_there_is_no_lookup(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, TARGET) as w:
            stage = CacheStage(None, Meter(w.ledger, w.metrics))
            assert stage.lookup(context(), TARGET, REQUEST, VERSIONS, Directives()) is None
            assert stage.recorder(None) is None

    asyncio.run(main())


def test_a_request_policy_keeps_out_of_the_cache_has_no_lookup(tmp_path: Path) -> None:
    async def main() -> None:
        async with _stage(tmp_path) as (_, stage):
            sampled = {**REQUEST, "temperature": 0.7}  # not deterministic
            assert stage.lookup(context(), TARGET, sampled, VERSIONS, Directives()) is None

    asyncio.run(main())


def test_a_stored_answer_is_a_hit_and_a_new_request_a_miss(tmp_path: Path) -> None:
    async def main() -> None:
        async with _stage(tmp_path) as (w, stage):
            ctx = context()
            assert await stage.hit(ctx, _lookup(stage, ctx)) is None
            assert ctx.outcome.cache == "miss"
            ctx.outcome.served_by("d", "d-v1")
            await _store(w, stage, ctx, _lookup(stage, ctx))
            again = context(request_id="again")
            hit = await stage.hit(again, _lookup(stage, again))
            assert hit is not None and hit.answer.parts == ("Hel", "lo")
            assert again.outcome.cache is None  # written by the replay, not the lookup

    asyncio.run(main())


@pytest.mark.parametrize(
    ("directives", "served", "stored"),
    [
        (Directives(), True, True),
        (Directives(store=False), True, False),  # Cache-Control: no-store
        (Directives(), False, False),  # no deployment noted as serving it
    ],
)
def test_the_recorder_stores_only_what_may_be_stored(
    tmp_path: Path, directives: Directives, served: bool, stored: bool
) -> None:
    async def main() -> None:
        async with _stage(tmp_path) as (w, stage):
            ctx = context()
            if served:
                ctx.outcome.served_by("d", "d-v1")
            await _store(w, stage, ctx, _lookup(stage, ctx, directives))
            later = context(request_id="later")
            assert (await stage.hit(later, _lookup(stage, later)) is not None) is stored

    asyncio.run(main())


def test_no_cache_skips_the_lookup_but_stores_the_answer(tmp_path: Path) -> None:
    async def main() -> None:
        async with _stage(tmp_path) as (w, stage):
            ctx = context()
            ctx.outcome.served_by("d", "d-v1")
            await _store(w, stage, ctx, _lookup(stage, ctx))
            fresh = context(request_id="fresh")  # Cache-Control: no-cache
            assert await stage.hit(fresh, _lookup(stage, fresh, Directives(lookup=False))) is None
            assert fresh.outcome.cache == "miss"

    asyncio.run(main())


class BrokenStore:
    """An entry store whose reads fail (a corrupt entry, a store that went away)."""

    async def get(self, key: str) -> bytes | None:
        raise OSError("the store went away")

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        raise OSError("the store went away")


def test_a_broken_store_is_a_miss_not_a_failed_request(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, TARGET) as w:
            cache = ResponseCache(BrokenStore(), Metrics())
            stage = CacheStage(cache, Meter(w.ledger, w.metrics))
            ctx = context()
            assert await stage.hit(ctx, _lookup(stage, ctx)) is None
            assert ctx.outcome.cache == "miss"

    asyncio.run(main())


def test_a_hit_is_replayed_as_a_generation_and_billed_its_fraction(tmp_path: Path) -> None:
    answer = Answer(("Hel", "lo"), "length", 10, 2, "d", "d-v1", time.time() - 90, 12_345)

    async def main() -> None:
        async with _stage(tmp_path) as (w, stage):
            ctx = context()
            lookup = _lookup(stage, ctx)
            hit = Hit(answer, "semantic-hit", 0.97)
            replay = stage.replay(ctx, "m", await _admitted(w, ctx), lookup, hit)
            async with aclosing(replay):
                events = [e async for e in replay]
            assert events == [
                Started(10),
                TextDelta("Hel", 0, more=True),
                TextDelta("lo", 0, more=True),
                Finished("length", 10, 2),
            ]
            out = ctx.outcome
            assert (out.cache, out.cache_score, out.deployment, out.model_version) == (
                "semantic-hit",
                0.97,
                "d",
                "d-v1",
            )
            assert out.cache_age is not None and 90 <= out.cache_age < 100
            assert out.first_token_at is not None
            (rec,) = await w.records()
            # Half (the configured fraction) of what it costs at today's price.
            assert rec["cost_nusd"] == w.spent() == cost(10, 2) // 2
            assert (rec["status"], rec["cache_hit"]) == (200, 1)

    asyncio.run(main())

"""The meter stage: what a request is charged, how its admission is settled and what
its ledger record says, however it ends; the token clock."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from inferplane.errors import BudgetExceeded, Unavailable
from inferplane.limits.memory import Scope
from inferplane.pipeline.admission import Admission, rate_scopes
from inferplane.pipeline.context import RequestContext
from inferplane.pipeline.metering import Meter, Tally
from tests.unit.pipeline.support import (
    KEY_LIMITS,
    ScriptedEngine,
    World,
    alias,
    context,
    cost,
    deployment,
    world,
)


@asynccontextmanager
async def _metered(tmp_path: Path) -> AsyncIterator[tuple[World, Meter]]:
    async with world(tmp_path, alias(deployment(ScriptedEngine("d")))) as w:
        yield w, Meter(w.ledger, w.metrics)


async def _admitted(w: World, ctx: RequestContext, prompt: int = 10, most: int = 10) -> Admission:
    scopes = rate_scopes(ctx.principal, "m", alias().limits)
    return await w.admitter.admit(ctx, "m", scopes, prompt, most)


@pytest.mark.parametrize(
    ("status", "reached", "cache_hit", "charged"),
    [
        (200, True, False, cost(10, 5)),
        (499, True, False, cost(10, 5)),  # left after it reached the model: what it used
        (499, False, False, 0),  # left while it waited for the model
        (200, False, False, 0),
        (502, True, False, 0),  # failures of ours cost nothing
        (503, False, False, 0),
        (200, False, True, cost(10, 5) // 4),  # a cache hit: the configured fraction
        (499, False, True, cost(10, 5) // 4),
    ],
)
def test_what_a_request_is_charged(
    tmp_path: Path, status: int, reached: bool, cache_hit: bool, charged: int
) -> None:
    async def main() -> int:
        async with _metered(tmp_path) as (w, meter):
            admission = await _admitted(w, context())
            tally = Tally(10, 5, status, cache_hit=cache_hit, reached=reached, hit_fraction=0.25)
            return meter.charge(admission, tally)

    assert asyncio.run(main()) == charged


def test_a_request_served_by_none_is_recorded_so(tmp_path: Path) -> None:
    async def main() -> None:
        async with _metered(tmp_path) as (w, meter):
            ctx = context()
            admission = await _admitted(w, ctx)
            with pytest.raises(Unavailable), meter.accounted(ctx, "m", admission, Tally()):
                raise Unavailable("no deployment can serve it")
            (rec,) = await w.records()
            assert w.spent() == 0 and w.budget_free()
        assert (rec["deployment"], rec["model_version"], rec["ttft_ms"]) == ("none", "none", None)
        assert (rec["status"], rec["cost_nusd"], rec["prompt_tokens"]) == (503, 0, 0)

    asyncio.run(main())


def test_the_record_says_who_served_it_and_when_its_first_token_came(tmp_path: Path) -> None:
    async def main() -> None:
        async with _metered(tmp_path) as (w, meter):
            # Started a second ago; its first token came 250 ms in.
            ctx = dataclasses.replace(context(), started=time.perf_counter() - 1.0)
            admission = await _admitted(w, ctx)
            ctx.outcome.served_by("dep-a", "sha256:abc")
            ctx.outcome.first_token_at = ctx.started + 0.25
            with meter.accounted(ctx, "m", admission, Tally()) as tally:
                tally.dispatched(10)
                tally.completion, tally.status = 5, 200
            (rec,) = await w.records()
            assert rec["cost_nusd"] == w.spent() == cost(10, 5)
        assert (rec["deployment"], rec["model_version"]) == ("dep-a", "sha256:abc")
        assert rec["ttft_ms"] == pytest.approx(250.0)
        assert rec["latency_ms"] >= 1000.0
        assert (rec["prompt_tokens"], rec["completion_tokens"], rec["status"]) == (10, 5, 200)
        assert rec["id"] == ctx.ledger_id

    asyncio.run(main())


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (BudgetExceeded("over budget"), 429),
        (RuntimeError("a bug of ours"), 500),
        (asyncio.CancelledError(), 499),  # the caller went away
    ],
)
def test_however_it_ends_it_is_recorded_once_with_its_status(
    tmp_path: Path, error: BaseException, status: int
) -> None:
    async def main() -> None:
        async with _metered(tmp_path) as (w, meter):
            ctx = context()
            admission = await _admitted(w, ctx)
            with pytest.raises(type(error)), meter.accounted(ctx, "m", admission, Tally()):
                raise error
            assert [r["status"] for r in await w.records()] == [status]

    asyncio.run(main())


def test_a_cache_hit_settles_with_no_tokens(tmp_path: Path) -> None:
    async def main() -> None:
        async with _metered(tmp_path) as (w, meter):
            ctx = context()
            admission = await _admitted(w, ctx, prompt=100, most=100)
            assert ctx.outcome.ratelimit_headers["x-ratelimit-remaining-tokens"] == "9800"
            tally = Tally(100, 50, 200, cache_hit=True, hit_fraction=1.0)
            with meter.accounted(ctx, "m", admission, tally):
                pass
            # It ran no model: none of the caller's per-minute tokens stay used ...
            assert w.window()["x-ratelimit-remaining-tokens"] == "10000"
            # ... but the answer's cost is charged and recorded.
            (rec,) = await w.records()
            assert rec["cost_nusd"] == w.spent() == cost(100, 50)
            assert (rec["cache_hit"], rec["prompt_tokens"]) == (1, 100)

    asyncio.run(main())


def test_the_token_clock_times_the_first_token_then_the_gaps(tmp_path: Path) -> None:
    async def main() -> None:
        async with _metered(tmp_path) as (w, meter):
            ctx = context()
            clock = meter.clock(ctx, "m")
            before = time.perf_counter()
            clock.tick()
            first = ctx.outcome.first_token_at
            assert first is not None and first >= before
            clock.tick()
            clock.tick()
            assert ctx.outcome.first_token_at == first  # the first token's, kept
            sample = w.metrics.registry.get_sample_value
            labels = {"model": "m"}
            ttft = sample("inferplane_time_to_first_token_seconds_count", labels)
            gaps = sample("inferplane_inter_token_latency_seconds_count", labels)
            assert (ttft, gaps) == (1.0, 2.0)

    asyncio.run(main())


def test_the_key_scope_the_window_probes_is_the_admitted_one() -> None:
    assert rate_scopes(context().principal, "m", alias().limits) == [Scope("key:k1", KEY_LIMITS)]

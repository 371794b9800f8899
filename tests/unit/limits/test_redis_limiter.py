"""The Redis limiter's two steps against a real redis-server (started for this module),
with two limiters standing for two gateway replicas."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest
import redis.asyncio as aioredis

from inferplane.errors import RateLimited
from inferplane.limits.memory import Scope
from inferplane.limits.policy import Limits
from inferplane.limits.redis_limiter import RedisLimiter
from tests.e2e.services import redis

Case = Callable[[RedisLimiter, RedisLimiter], Awaitable[None]]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis() as url:
        yield url


def run(url: str, case: Case) -> None:
    """`case` with two replicas' limiters sharing fresh keys of one Redis."""

    async def main() -> None:
        client = aioredis.from_url(url)
        prefix = f"t{uuid.uuid4().hex}:"
        a, b = RedisLimiter(client, prefix=prefix), RedisLimiter(client, prefix=prefix)
        try:
            await case(a, b)
            await settled(a)
            await settled(b)
        finally:
            await client.aclose()

    asyncio.run(main())


async def settled(limiter: RedisLimiter) -> None:
    while limiter._tasks:
        await asyncio.gather(*limiter._tasks)


def scope(name: str = "key:k", **limits: int) -> Scope:
    return Scope(name, Limits.model_validate(limits))


def test_a_request_refused_after_the_first_step_stays_counted(redis_url: str) -> None:
    async def case(a: RedisLimiter, b: RedisLimiter) -> None:
        for limiter in (a, b):
            (await limiter.acquire([scope(rpm=2)], None)).settle(0)
        with pytest.raises(RateLimited) as info:
            await a.acquire([scope(rpm=2)], None)
        assert info.value.code == "rate_limit_exceeded"
        assert info.value.headers["x-ratelimit-remaining-requests"] == "0"

    run(redis_url, case)


def test_headers_after_each_step(redis_url: str) -> None:
    async def case(a: RedisLimiter, b: RedisLimiter) -> None:
        hold = await a.acquire([scope(rpm=5, tpm=100)], None)
        assert hold.headers["x-ratelimit-remaining-requests"] == "4"
        assert hold.headers["x-ratelimit-remaining-tokens"] == "100"
        await hold.reserve(30)
        assert hold.headers["x-ratelimit-remaining-requests"] == "4"
        assert hold.headers["x-ratelimit-remaining-tokens"] == "70"
        hold.settle(30)

    run(redis_url, case)


def test_tokens_are_reserved_in_every_scope_or_none(redis_url: str) -> None:
    async def case(a: RedisLimiter, b: RedisLimiter) -> None:
        key, team = scope("key:a", rpm=10, tpm=100), scope("team:t", tpm=50)
        hold = await a.acquire([key, team], None)
        with pytest.raises(RateLimited) as info:
            await hold.reserve(60)
        assert info.value.code == "request_too_large"
        assert info.value.headers["x-ratelimit-remaining-requests"] == "9"
        assert info.value.headers["x-ratelimit-limit-tokens"] == "50"
        hold.settle(0)
        after = await b.acquire([key], 100)
        assert after.headers["x-ratelimit-remaining-tokens"] == "0"
        assert after.headers["x-ratelimit-remaining-requests"] == "8"
        after.settle(100)

    run(redis_url, case)


def test_refused_at_the_second_step_it_holds_nothing_once_settled(redis_url: str) -> None:
    async def case(a: RedisLimiter, b: RedisLimiter) -> None:
        limits = scope(tpm=100, max_parallel=2)
        busy = await a.acquire([limits], 90)
        hold = await b.acquire([limits], None)
        with pytest.raises(RateLimited) as info:
            await hold.reserve(20)
        assert info.value.code == "tokens_limit_exceeded"
        hold.settle(0)
        busy.settle(5)
        await settled(a)
        await settled(b)
        again = await a.acquire([limits], None)
        await again.reserve(95)
        assert again.headers["x-ratelimit-remaining-tokens"] == "0"
        again.settle(95)

    run(redis_url, case)


def test_the_first_step_refuses_a_scope_without_a_token_left(redis_url: str) -> None:
    async def case(a: RedisLimiter, b: RedisLimiter) -> None:
        full = await a.acquire([scope(rpm=5, tpm=100)], 100)
        with pytest.raises(RateLimited) as info:
            await b.acquire([scope(rpm=5, tpm=100)], None)
        assert info.value.code == "tokens_limit_exceeded"
        assert info.value.headers["x-ratelimit-remaining-requests"] == "4"
        full.settle(100)

    run(redis_url, case)


def test_second_steps_on_two_replicas_never_overshoot(redis_url: str) -> None:
    async def case(a: RedisLimiter, b: RedisLimiter) -> None:
        limits = [scope(tpm=1000)]
        holds = [await (a if i % 2 else b).acquire(limits, None) for i in range(30)]
        results = await asyncio.gather(*(h.reserve(70) for h in holds), return_exceptions=True)
        admitted = [r for r in results if r is None]
        assert all(isinstance(r, RateLimited) for r in results if r is not None)
        assert len(admitted) == 1000 // 70  # 14: every token counted once, across both
        for h in holds:
            h.settle(0)

    run(redis_url, case)


def test_settled_while_its_tokens_are_on_the_wire(redis_url: str) -> None:
    async def case(a: RedisLimiter, b: RedisLimiter) -> None:
        limits = [scope(tpm=100)]
        hold = await a.acquire(limits, None)
        reserving = asyncio.ensure_future(hold.reserve(100))
        await asyncio.sleep(0)  # the script is sent ...
        reserving.cancel()  # ... and its caller leaves before the answer
        hold.settle(0)
        await settled(a)
        # The settlement waited for the reservation: the window is empty again.
        after = await b.acquire(limits, 100)
        assert after.headers["x-ratelimit-remaining-tokens"] == "0"
        after.settle(100)

    run(redis_url, case)


def test_a_scope_without_a_token_limit_keeps_no_token_log(redis_url: str) -> None:
    async def case(a: RedisLimiter, b: RedisLimiter) -> None:
        # No TPM: no second trip, and a count no limit reads is not stored.
        hold = await a.acquire([scope(rpm=10)], None)
        await hold.reserve(2**40)
        hold.settle(2**40)
        await settled(a)
        keys = await a._redis.keys(a._prefix + "t*")
        assert keys == []

    run(redis_url, case)

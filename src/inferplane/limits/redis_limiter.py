"""The shared limiter: the same sliding-window algorithm as `memory.py`, in Redis.

One Lua script checks every scope of a request and commits to all or none, so N
gateway replicas admit exactly what one would: a key limited to N requests per minute
gets N, however many replicas it is spread over. Time comes from Redis (`TIME`), not
from the replicas' clocks. Concurrency slots are leases (expiring after `lease_s`), so
a replica that dies holding slots cannot block a key forever.

If Redis cannot be reached, `failure_mode` decides: "closed" refuses (503), "local"
falls back to in-memory limits divided by the number of replicas. The limiter retries
Redis after `retry_after_s`, so it recovers by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from importlib import resources
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from inferplane.errors import RateLimited, Unavailable
from inferplane.limits.memory import WINDOW_S, Hold, MemoryLimiter, Scope, _duration
from inferplane.limits.policy import Limits

log = logging.getLogger(__name__)

_LUA = resources.files("inferplane.limits") / "lua"


class _RedisReservation:
    def __init__(
        self,
        limiter: RedisLimiter,
        rid: str,
        scopes: list[Scope],
        reserved: int,
        headers: dict[str, str],
    ):
        self._limiter = limiter
        self._rid_s = rid
        self._scopes = scopes
        self.reserved = reserved
        self.headers = headers
        self._done = False

    def settle(self, actual_tokens: int) -> None:
        if not self._done:
            self._done = True
            self._limiter._settle_later(self._rid_s, self._scopes, actual_tokens)


class RedisLimiter:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        failure_mode: Literal["closed", "local"] = "closed",
        replicas: int = 1,
        lease_s: float = 600.0,
        retry_after_s: float = 1.0,
        prefix: str = "inferplane:rl:",
    ):
        self._redis = client
        self._admit = client.register_script((_LUA / "admit.lua").read_text())
        self._settle = client.register_script((_LUA / "settle.lua").read_text())
        self._failure_mode = failure_mode
        self._replicas = max(1, replicas)
        self._lease_ms = int(lease_s * 1000)
        self._retry_after_s = retry_after_s
        self._prefix = prefix
        self._local = MemoryLimiter()
        self._down_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    async def acquire(self, scopes: list[Scope], tokens: int) -> Hold:
        if not scopes:
            return self._local.admit([], tokens)
        if time.monotonic() >= self._down_until:
            try:
                return await self._acquire_redis(scopes, tokens)
            except (RedisError, OSError) as exc:
                self._down_until = time.monotonic() + self._retry_after_s
                log.warning(
                    "redis limiter unreachable (%s); failure mode %s", exc, self._failure_mode
                )
        if self._failure_mode == "closed":
            raise Unavailable(
                "Rate limits cannot be checked right now.",
                retry_after=1,
                code="limiter_unavailable",
            )
        return self._local.admit([self._share(s) for s in scopes], tokens)

    def _share(self, scope: Scope) -> Scope:
        """This replica's share of a limit while the shared counters are out of reach."""
        lim, n = scope.limits, self._replicas

        def part(v: int | None) -> int | None:
            return None if v is None else max(1, v // n)

        return Scope(
            scope.name,
            Limits(
                rpm=part(lim.rpm),
                tpm=part(lim.tpm),
                max_parallel=part(lim.max_parallel),
                max_tokens=lim.max_tokens,
            ),
        )

    async def _acquire_redis(self, scopes: list[Scope], tokens: int) -> Hold:
        rid = uuid.uuid4().hex
        args: list[Any] = [self._prefix, rid, tokens, len(scopes), self._lease_ms]
        for s in scopes:
            lim = s.limits
            args += [s.name, lim.rpm or 0, lim.tpm or 0, lim.max_parallel or 0]
        result = await self._admit(args=args)
        if int(result[0]) == 0:
            raise self._refusal(scopes[int(result[1])], result, tokens)
        headers = _headers(scopes, [int(x) for x in result[2:]], tokens)
        return _RedisReservation(self, rid, scopes, tokens, headers)

    def _refusal(self, scope: Scope, result: list[Any], tokens: int) -> RateLimited:
        kind, wait_s, used = result[2], int(result[3]) / 1000, int(result[4])
        kind = kind.decode() if isinstance(kind, bytes) else kind
        lim = scope.limits
        headers: dict[str, str] = {}
        if lim.rpm is not None:
            used_r = used if kind == "requests" else 0
            headers.update(_kind_headers("requests", lim.rpm, lim.rpm - used_r, wait_s))
        if kind == "concurrency":
            return RateLimited(
                f"Too many requests in flight for {scope.name}: limit {lim.max_parallel}.",
                retry_after=1,
                ratelimit_headers=headers,
                code="concurrency_limit_exceeded",
            )
        if kind == "requests":
            return RateLimited(
                f"Rate limit reached for {scope.name}: {lim.rpm} requests per minute. "
                f"Try again in {_duration(wait_s)}.",
                retry_after=wait_s,
                ratelimit_headers=headers,
            )
        assert lim.tpm is not None
        headers.update(_kind_headers("tokens", lim.tpm, lim.tpm - used, wait_s))
        if kind == "too_large":
            return RateLimited(
                f"Request too large for {scope.name}: {tokens} tokens (prompt + max_tokens) "
                f"exceed the limit of {lim.tpm} tokens per minute. Lower max_tokens.",
                retry_after=WINDOW_S,
                ratelimit_headers=headers,
                code="request_too_large",
            )
        return RateLimited(
            f"Rate limit reached for {scope.name}: {lim.tpm} tokens per minute, {used} used, "
            f"{tokens} requested. Try again in {_duration(wait_s)}.",
            retry_after=wait_s,
            ratelimit_headers=headers,
            code="tokens_limit_exceeded",
        )

    def _settle_later(self, rid: str, scopes: list[Scope], actual: int) -> None:
        # Settlement must not depend on the request's task surviving (it may be
        # cancelled by a disconnect), so it runs as its own task.
        task = asyncio.get_running_loop().create_task(self._settle_now(rid, scopes, actual))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle_now(self, rid: str, scopes: list[Scope], actual: int) -> None:
        try:
            await self._settle(
                args=[self._prefix, rid, actual, len(scopes), *[s.name for s in scopes]]
            )
        except (RedisError, OSError) as exc:
            log.warning("redis limiter: settlement lost (%s); the window expires it", exc)


def _kind_headers(kind: str, limit: int, remaining: int, reset_s: float) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{kind}": str(limit),
        f"x-ratelimit-remaining-{kind}": str(max(0, remaining)),
        f"x-ratelimit-reset-{kind}": _duration(reset_s),
    }


def _headers(scopes: list[Scope], counts: list[int], tokens: int) -> dict[str, str]:
    """Headers after admission, from the counts the script saw before committing."""
    req, tok = [], []
    for i, s in enumerate(scopes):
        before_requests, before_tokens = counts[2 * i], counts[2 * i + 1]
        if s.limits.rpm is not None:
            req.append((s.limits.rpm - before_requests - 1, s.limits.rpm))
        if s.limits.tpm is not None:
            tok.append((s.limits.tpm - before_tokens - tokens, s.limits.tpm))
    headers: dict[str, str] = {}
    if req:
        remaining, limit = min(req)
        headers.update(_kind_headers("requests", limit, remaining, WINDOW_S))
    if tok:
        remaining, limit = min(tok)
        headers.update(_kind_headers("tokens", limit, remaining, WINDOW_S))
    return headers

"""The shared limiter: the same sliding-window algorithm as `memory.py`, in Redis.

One Lua script (`lua/admit.lua`) checks every scope of a request and commits to all or
none, so N gateway replicas admit exactly what one would: a key limited to N requests
per minute gets N, however many replicas it is spread over. Time comes from Redis
(`TIME`), not from the replicas' clocks. Concurrency slots are leases (expiring after
`lease_s`), so a replica that dies holding slots cannot block a key forever.

The two-step admission of `memory.py` is the same script run twice, one round trip
each: with `count` and no tokens (the request and its slot), then with the tokens only
(`Hold.reserve`: every TPM window checked and extended at once). A hold whose scopes
have no TPM limit reserves no tokens, so it makes no second trip. A hold settled while
its `reserve` is still on the wire (the client left) is settled once that has landed.

If Redis cannot be reached, `failure_mode` decides: "closed" refuses (503), "local"
falls back to in-memory limits divided by the number of replicas. The limiter retries
Redis after `retry_after_s`, so it recovers by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        self, limiter: RedisLimiter, rid: str, scopes: list[Scope], headers: dict[str, str]
    ):
        self._limiter = limiter
        self._rid = rid
        self._scopes = scopes
        self.headers = headers
        self._done = False
        # A `reserve` in flight (settlement waits for it) and, when Redis failed during
        # it, the local fallback's hold of the tokens.
        self._pending: asyncio.Future[Any] | None = None
        self._local: Hold | None = None

    async def reserve(self, tokens: int) -> None:
        assert not self._done, "tokens reserved for a settled request"
        if any(s.limits.tpm for s in self._scopes):
            self._local = await self._limiter._reserve(self, tokens)

    def settle(self, actual_tokens: int) -> None:
        if self._done:
            return
        self._done = True
        if self._local is not None:
            self._local.settle(actual_tokens)
        self._limiter._settle_later(self._rid, self._scopes, actual_tokens, self._pending)


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

    async def acquire(self, scopes: list[Scope], tokens: int | None) -> Hold:
        if not scopes:
            return self._local.admit([], tokens)
        if time.monotonic() >= self._down_until:
            try:
                return await self._acquire_redis(scopes, tokens)
            except (RedisError, OSError) as exc:
                self._unreachable(exc)
        self._fail_closed()
        return self._local.admit([self._share(s) for s in scopes], tokens)

    def _unreachable(self, exc: Exception) -> None:
        self._down_until = time.monotonic() + self._retry_after_s
        log.warning("redis limiter unreachable (%s); failure mode %s", exc, self._failure_mode)

    def _fail_closed(self) -> None:
        if self._failure_mode == "closed":
            raise Unavailable(
                "Rate limits cannot be checked right now.",
                retry_after=1,
                code="limiter_unavailable",
            )

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

    def _args(self, rid: str, scopes: list[Scope], tokens: int | None, count: bool) -> list[Any]:
        head = [self._prefix, rid, -1 if tokens is None else tokens, int(count), self._lease_ms]
        args: list[Any] = [*head, len(scopes)]
        for s in scopes:
            lim = s.limits
            args += [s.name, lim.rpm or 0, lim.tpm or 0, lim.max_parallel or 0]
        return args

    async def _acquire_redis(self, scopes: list[Scope], tokens: int | None) -> Hold:
        rid = uuid.uuid4().hex
        result = await self._admit(args=self._args(rid, scopes, tokens, True))
        if int(result[0]) == 0:
            raise self._refusal(scopes[int(result[1])], result, tokens, {})
        counts = [int(x) for x in result[2:]]
        return _RedisReservation(self, rid, scopes, _headers(scopes, counts))

    async def _reserve(self, hold: _RedisReservation, tokens: int) -> Hold | None:
        """Phase two of `hold`: its tokens; a local hold of them if Redis failed."""
        scopes = hold._scopes
        if time.monotonic() >= self._down_until:
            call = asyncio.ensure_future(
                self._admit(args=self._args(hold._rid, scopes, tokens, False))
            )
            hold._pending = call
            try:
                result = await asyncio.shield(call)
            except (RedisError, OSError) as exc:
                self._unreachable(exc)
            else:
                if int(result[0]) == 0:
                    raise self._refusal(scopes[int(result[1])], result, tokens, hold.headers)
                counts = [int(x) for x in result[2:]]
                hold.headers = {**hold.headers, **_headers(scopes, counts, requests=False)}
                return None
        self._fail_closed()
        # Redis went away between the two steps: the request is counted in this
        # replica's share of the limits from now on, tokens and all.
        local = self._local.admit([self._share(s) for s in scopes], tokens)
        hold.headers = local.headers
        return local

    def _refusal(
        self, scope: Scope, result: list[Any], tokens: int | None, counted: dict[str, str]
    ) -> RateLimited:
        """`counted`: the headers of a request counted before (phase two), else empty."""
        kind, wait_s, used, requests = (
            result[2],
            int(result[3]) / 1000,
            int(result[4]),
            int(result[5]),
        )
        kind = kind.decode() if isinstance(kind, bytes) else kind
        lim = scope.limits
        headers = {k: v for k, v in counted.items() if k.endswith("-requests")}
        if lim.rpm is not None and not headers:
            headers.update(_kind_headers("requests", lim.rpm, lim.rpm - requests, wait_s))
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
        asked = 1 if tokens is None else tokens
        if kind == "too_large":
            return RateLimited(
                f"Request too large for {scope.name}: {asked} tokens (prompt + max_tokens) "
                f"exceed the limit of {lim.tpm} tokens per minute. Lower max_tokens.",
                retry_after=WINDOW_S,
                ratelimit_headers=headers,
                code="request_too_large",
            )
        return RateLimited(
            f"Rate limit reached for {scope.name}: {lim.tpm} tokens per minute, {used} used, "
            f"{asked} requested. Try again in {_duration(wait_s)}.",
            retry_after=wait_s,
            ratelimit_headers=headers,
            code="tokens_limit_exceeded",
        )

    def _settle_later(
        self, rid: str, scopes: list[Scope], actual: int, after: asyncio.Future[Any] | None
    ) -> None:
        # Settlement must not depend on the request's task surviving (it may be
        # cancelled by a disconnect), so it runs as its own task.
        task = asyncio.get_running_loop().create_task(self._settle_now(rid, scopes, actual, after))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle_now(
        self, rid: str, scopes: list[Scope], actual: int, after: asyncio.Future[Any] | None
    ) -> None:
        if after is not None:  # a reservation still in flight lands first
            with contextlib.suppress(Exception):
                await after
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


def _headers(scopes: list[Scope], counts: list[int], *, requests: bool = True) -> dict[str, str]:
    """Headers after admission, from the counts the script left in each window."""
    req, tok = [], []
    for i, s in enumerate(scopes):
        after_requests, after_tokens = counts[2 * i], counts[2 * i + 1]
        if s.limits.rpm is not None:
            req.append((s.limits.rpm - after_requests, s.limits.rpm))
        if s.limits.tpm is not None:
            tok.append((s.limits.tpm - after_tokens, s.limits.tpm))
    headers: dict[str, str] = {}
    if req and requests:
        remaining, limit = min(req)
        headers.update(_kind_headers("requests", limit, remaining, WINDOW_S))
    if tok:
        remaining, limit = min(tok)
        headers.update(_kind_headers("tokens", limit, remaining, WINDOW_S))
    return headers

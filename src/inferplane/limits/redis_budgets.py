"""Budgets shared by replicas: the tracker's algorithm, atomic in Redis.

Each (scope, period) is a Redis hash {spent, reserved}. Reservation checks every budget
of the request and reserves in all or none, in one script, so concurrent requests on
any number of replicas cannot overshoot a cap. The first use of a period seeds `spent`
from the usage ledger (primed locally off the request path), which also restores the
count if Redis restarts empty: the ledger, not Redis, is the durable record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from inferplane.errors import Unavailable
from inferplane.limits.budgets import (
    BudgetScope,
    BudgetTracker,
    Spend,
    exceeded,
    period_start,
)

log = logging.getLogger(__name__)
_LUA = resources.files("inferplane.limits") / "lua"
_TTL = {"day": 2 * 86400, "week": 8 * 86400, "month": 32 * 86400, "total": 0}


class _RedisHold:
    def __init__(
        self, owner: RedisBudgets, scopes: list[BudgetScope], keys: list[str], reserved: int
    ):
        self._owner = owner
        self._scopes = scopes
        self._keys = keys
        self._reserved = reserved
        self._done = False

    def settle(self, actual_nusd: int) -> None:
        if not self._done:
            self._done = True
            self._owner._settle_later(self._scopes, self._keys, self._reserved, actual_nusd)


class RedisBudgets:
    def __init__(
        self,
        client: aioredis.Redis,
        local: BudgetTracker,
        alert: Any,
        *,
        failure_mode: Literal["closed", "local"] = "closed",
        prefix: str = "inferplane:budget:",
    ):
        self._reserve = client.register_script((_LUA / "budget_reserve.lua").read_text())
        self._settle = client.register_script((_LUA / "budget_settle.lua").read_text())
        self._local = local  # primed spend per period, and the fallback
        self._alert = alert
        self._failure_mode = failure_mode
        self._prefix = prefix
        self._down_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    async def acquire(self, scopes: list[BudgetScope], cost_nusd: int) -> Spend:
        if time.monotonic() >= self._down_until:
            try:
                return await self._acquire_redis(scopes, cost_nusd)
            except (RedisError, OSError) as exc:
                self._down_until = time.monotonic() + 1.0
                log.warning(
                    "redis budgets unreachable (%s); failure mode %s", exc, self._failure_mode
                )
        if self._failure_mode == "closed":
            raise Unavailable(
                "Budgets cannot be checked right now.", retry_after=1, code="budget_unavailable"
            )
        return self._local.reserve(scopes, cost_nusd)

    async def _acquire_redis(self, scopes: list[BudgetScope], cost: int) -> _RedisHold:
        now = datetime.now(UTC)
        keys: list[str] = []
        args: list[str | int] = [self._prefix, cost, len(scopes)]
        for s in scopes:
            start = period_start(s.budget.period, now)
            key = f"{s.name}:{int(start.timestamp())}"
            keys.append(key)
            args += [
                key,
                s.budget.cap_nusd,
                self._local.spent_in(s.name, start),
                _TTL[s.budget.period],
            ]
        result = await self._reserve(args=args)
        if int(result[0]) == 0:
            scope, spent, reserved = scopes[int(result[1])], int(result[2]), int(result[3])
            raise exceeded(scope, spent, reserved, cost)
        return _RedisHold(self, scopes, keys, cost)

    def _settle_later(
        self, scopes: list[BudgetScope], keys: list[str], reserved: int, actual: int
    ) -> None:
        task = asyncio.get_running_loop().create_task(
            self._settle_now(scopes, keys, reserved, actual)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle_now(
        self, scopes: list[BudgetScope], keys: list[str], reserved: int, actual: int
    ) -> None:
        args: list[Any] = [self._prefix, reserved, actual, len(scopes)]
        for scope, key in zip(scopes, keys, strict=True):
            args += [key, scope.budget.cap_nusd * scope.budget.soft_pct // 100]
        try:
            crossed = await self._settle(args=args)
        except (RedisError, OSError) as exc:
            log.warning("redis budgets: settlement lost (%s)", exc)
            return
        for i in range(0, len(crossed), 2):
            self._alert(scopes[int(crossed[i])], int(crossed[i + 1]))

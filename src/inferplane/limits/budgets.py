"""Budgets: spend caps per key and team, reserved before a request runs.

Admission reserves the request's worst-case cost (prompt + max_tokens at the model's
price) in every budgeted scope, and refuses if spent + reserved + cost would pass a cap;
settlement swaps the reservation for the actual cost. Check and reserve happen in one
step on the event loop, so concurrent requests cannot overshoot a cap by more than the
one request whose reservation was under-estimated (never, with worst-case reservations).

Spend so far in the current period is primed from the usage ledger whenever the tenancy
snapshot is rebuilt (start-up and admin changes, off the request path); from then on the
tracker itself counts every settled request. A new period starts from zero.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from inferplane.errors import BudgetExceeded
from inferplane.limits.policy import Budget

log = logging.getLogger(__name__)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def exceeded(scope: BudgetScope, spent: int, reserved: int, cost: int) -> BudgetExceeded:
    b = scope.budget
    return BudgetExceeded(
        f"Budget exhausted for {scope.name}: ${spent / 1e9:.6f} spent and "
        f"${reserved / 1e9:.6f} reserved of ${b.usd:g} per {b.period}; "
        f"this request may cost up to ${cost / 1e9:.6f}."
    )


class Spend(Protocol):
    """A request's hold on its budgets (memory or Redis)."""

    def settle(self, actual_nusd: int) -> None: ...


class Budgets(Protocol):
    async def acquire(self, scopes: list[BudgetScope], cost_nusd: int) -> Spend: ...


def period_start(period: str, now: datetime) -> datetime:
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    return EPOCH


@dataclass(frozen=True)
class BudgetScope:
    name: str  # "key:<id>" or "team:<id>"
    budget: Budget


@dataclass
class _Window:
    start: datetime
    spent: int = 0  # nano-USD settled in this period
    reserved: int = 0  # nano-USD held by requests in flight
    alerted: bool = False


class BudgetHold:
    def __init__(self, tracker: BudgetTracker, scopes: list[BudgetScope], reserved: int):
        self._tracker = tracker
        self._scopes = scopes
        self._reserved = reserved
        self._done = False

    def settle(self, actual_nusd: int) -> None:
        if not self._done:
            self._done = True
            self._tracker._settle(self._scopes, self._reserved, actual_nusd)


class BudgetTracker:
    def __init__(
        self,
        alert: Callable[[BudgetScope, int], None],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self._alert = alert
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def prime(self, name: str, budget: Budget, spent_since: Callable[[datetime], int]) -> None:
        """Set a scope's spend in the current period from the ledger (call off the loop)."""
        start = period_start(budget.period, self._clock())
        window = self._windows.get(name)
        if window is None or window.start != start:
            spent = spent_since(start)
            self._windows[name] = _Window(start, spent, window.reserved if window else 0)

    def reserve(self, scopes: list[BudgetScope], cost_nusd: int) -> BudgetHold:
        now = self._clock()
        windows = [self._window(s, now) for s in scopes]
        for scope, window in zip(scopes, windows, strict=True):
            cap = scope.budget.cap_nusd
            if window.spent + window.reserved + cost_nusd > cap:
                raise exceeded(scope, window.spent, window.reserved, cost_nusd)
        for window in windows:
            window.reserved += cost_nusd
        return BudgetHold(self, scopes, cost_nusd)

    def spent(self, name: str) -> int:
        window = self._windows.get(name)
        return window.spent if window else 0

    def spent_in(self, name: str, start: datetime) -> int:
        """The primed spend of `name` for the period starting at `start` (0 if unknown)."""
        window = self._windows.get(name)
        return window.spent if window is not None and window.start == start else 0

    async def acquire(self, scopes: list[BudgetScope], cost_nusd: int) -> BudgetHold:
        return self.reserve(scopes, cost_nusd)

    def _window(self, scope: BudgetScope, now: datetime) -> _Window:
        start = period_start(scope.budget.period, now)
        window = self._windows.get(scope.name)
        if window is None or window.start != start:
            # A new period (or a scope primed before it had a budget): spend starts at 0.
            reserved = window.reserved if window else 0
            window = self._windows[scope.name] = _Window(start, 0, reserved)
        return window

    def _settle(self, scopes: list[BudgetScope], reserved: int, actual: int) -> None:
        now = self._clock()
        for scope in scopes:
            window = self._window(scope, now)
            window.reserved = max(0, window.reserved - reserved)
            window.spent += actual
            soft = scope.budget.cap_nusd * scope.budget.soft_pct // 100
            if not window.alerted and window.spent >= soft:
                window.alerted = True
                self._alert(scope, window.spent)

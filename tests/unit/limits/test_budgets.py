from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from inferplane.limits.budgets import (
    BudgetExceeded,
    BudgetScope,
    BudgetTracker,
    period_start,
)
from inferplane.limits.policy import Budget

USD = 1_000_000_000  # nano-USD


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_periods() -> None:
    now = datetime(2026, 11, 25, 15, 30, tzinfo=UTC)  # a Wednesday
    assert period_start("day", now) == datetime(2026, 11, 25, tzinfo=UTC)
    assert period_start("week", now) == datetime(2026, 11, 23, tzinfo=UTC)
    assert period_start("month", now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert period_start("total", now).year == 1970


def test_reserve_worst_case_then_settle_actual() -> None:
    alerts: list[tuple[str, int]] = []
    tracker = BudgetTracker(alert=lambda s, spent: alerts.append((s.name, spent)), clock=Clock())
    scope = BudgetScope("key:k", Budget(usd=1.0, period="day", soft_pct=50))
    hold = tracker.reserve([scope], int(0.8 * USD))
    with pytest.raises(BudgetExceeded) as info:
        tracker.reserve([scope], int(0.3 * USD))  # 0.8 reserved + 0.3 > 1.0
    assert info.value.status == 429 and info.value.code == "insufficient_quota"
    hold.settle(int(0.6 * USD))
    assert tracker.spent("key:k") == int(0.6 * USD)
    assert alerts == [("key:k", int(0.6 * USD))]  # crossed 50 %, alerted once
    tracker.reserve([scope], int(0.3 * USD)).settle(int(0.3 * USD))
    assert alerts == [("key:k", int(0.6 * USD))]
    with pytest.raises(BudgetExceeded):
        tracker.reserve([scope], int(0.2 * USD))


def test_a_new_period_starts_from_zero() -> None:
    clock = Clock()
    tracker = BudgetTracker(alert=lambda s, spent: None, clock=clock)
    scope = BudgetScope("team:t", Budget(usd=1.0, period="day"))
    tracker.reserve([scope], USD).settle(USD)
    with pytest.raises(BudgetExceeded):
        tracker.reserve([scope], 1)
    clock.now += timedelta(days=1)
    tracker.reserve([scope], USD)


def test_prime_reads_spend_from_the_ledger_once_per_period() -> None:
    calls: list[datetime] = []
    tracker = BudgetTracker(alert=lambda s, spent: None, clock=Clock())
    budget = Budget(usd=1.0, period="month")

    def spent_since(since: datetime) -> int:
        calls.append(since)
        return int(0.9 * USD)

    tracker.prime("key:k", budget, spent_since)
    tracker.prime("key:k", budget, spent_since)
    assert calls == [datetime(2026, 11, 1, tzinfo=UTC)]
    with pytest.raises(BudgetExceeded):
        tracker.reserve([BudgetScope("key:k", budget)], int(0.2 * USD))


def test_refusal_reserves_nothing() -> None:
    tracker = BudgetTracker(alert=lambda s, spent: None, clock=Clock())
    small = BudgetScope("key:k", Budget(usd=1.0))
    big = BudgetScope("team:t", Budget(usd=0.1))
    with pytest.raises(BudgetExceeded):
        tracker.reserve([small, big], int(0.5 * USD))
    tracker.reserve([small], USD)  # the key's budget is untouched

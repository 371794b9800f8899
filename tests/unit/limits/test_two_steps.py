"""Admission in two steps, in memory: the request first (RPM, concurrency), its tokens
once counted (TPM). The same cases run against Redis in `test_redis_limiter.py`."""

from __future__ import annotations

import pytest

from inferplane.errors import RateLimited
from inferplane.limits.memory import MemoryLimiter, Scope
from inferplane.limits.policy import Limits
from tests.unit.limits.test_memory import Clock


def scope(name: str = "key:k", **limits: int) -> Scope:
    return Scope(name, Limits.model_validate(limits))


def test_a_request_refused_after_the_first_step_stays_counted() -> None:
    limiter = MemoryLimiter(Clock())
    for _ in range(2):
        # Counted, then refused before its tokens (a prompt too long for the model).
        limiter.admit([scope(rpm=2)], None).settle(0)
    with pytest.raises(RateLimited) as info:
        limiter.admit([scope(rpm=2)], None)
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.headers["x-ratelimit-remaining-requests"] == "0"


def test_headers_after_each_step() -> None:
    limiter = MemoryLimiter(Clock())
    hold = limiter.admit([scope(rpm=5, tpm=100)], None)
    assert hold.headers["x-ratelimit-remaining-requests"] == "4"
    assert hold.headers["x-ratelimit-remaining-tokens"] == "100"
    hold.add(30)
    assert hold.headers["x-ratelimit-remaining-requests"] == "4"
    assert hold.headers["x-ratelimit-remaining-tokens"] == "70"


def test_tokens_are_reserved_in_every_scope_or_none() -> None:
    limiter = MemoryLimiter(Clock())
    key, team = scope("key:a", rpm=10, tpm=100), scope("team:t", tpm=50)
    hold = limiter.admit([key, team], None)
    with pytest.raises(RateLimited) as info:
        hold.add(60)  # fits the key's window, not the team's
    assert info.value.code == "request_too_large"
    # The refusal says the request counted, and the team's tokens.
    assert info.value.headers["x-ratelimit-remaining-requests"] == "9"
    assert info.value.headers["x-ratelimit-limit-tokens"] == "50"
    hold.settle(0)
    # The key's window kept none of the 60 tokens.
    after = limiter.admit([key], 100)
    assert after.headers["x-ratelimit-remaining-tokens"] == "0"
    assert after.headers["x-ratelimit-remaining-requests"] == "8"


def test_refused_at_the_second_step_it_holds_nothing_once_settled() -> None:
    limiter = MemoryLimiter(Clock())
    limits = scope(tpm=100, max_parallel=2)
    busy = limiter.admit([limits], 90)
    hold = limiter.admit([limits], None)
    with pytest.raises(RateLimited) as info:
        hold.add(20)
    assert info.value.code == "tokens_limit_exceeded"
    hold.settle(0)
    # Its concurrency slot is free (busy holds the other one) ...
    again = limiter.admit([limits], None)
    busy.settle(5)
    # ... and it left no tokens in the window.
    again.add(95)
    assert again.headers["x-ratelimit-remaining-tokens"] == "0"


def test_tokens_settle_to_what_was_used_after_the_second_step() -> None:
    limiter = MemoryLimiter(Clock())
    hold = limiter.admit([scope(tpm=100)], None)
    hold.add(80)
    hold.settle(20)
    assert limiter.admit([scope(tpm=100)], 80).headers["x-ratelimit-remaining-tokens"] == "0"


def test_the_first_step_refuses_a_scope_without_a_token_left() -> None:
    limiter = MemoryLimiter(Clock())
    limiter.admit([scope(rpm=5, tpm=100)], 100)
    with pytest.raises(RateLimited) as info:
        limiter.admit([scope(rpm=5, tpm=100)], None)
    assert info.value.code == "tokens_limit_exceeded"
    # Refused before any work, it was not counted: 4 requests left, not 3.
    assert info.value.headers["x-ratelimit-remaining-requests"] == "4"


def test_tokens_leave_the_window_a_minute_after_they_were_reserved() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    hold = limiter.admit([scope(tpm=100)], None)
    clock.now += 30  # a long tokenization: the tokens count from when they were reserved
    hold.add(100)
    clock.now += 31
    with pytest.raises(RateLimited):
        limiter.admit([scope(tpm=100)], 1)
    clock.now += 30
    limiter.admit([scope(tpm=100)], 100)

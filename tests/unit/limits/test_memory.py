from __future__ import annotations

import pytest

from inferplane.errors import RateLimited
from inferplane.limits.memory import MemoryLimiter, Scope
from inferplane.limits.policy import Limits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scope(**limits: int) -> Scope:
    return Scope("key:k", Limits.model_validate(limits))


def test_rpm_is_exact_over_a_sliding_window() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    for _ in range(3):
        limiter.admit([scope(rpm=3)], 0).settle(0)
        clock.now += 10
    with pytest.raises(RateLimited) as info:
        limiter.admit([scope(rpm=3)], 0)
    # The oldest admission (30 s ago) leaves the window in 30 s.
    assert info.value.headers["Retry-After"] == "30"
    assert info.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert info.value.headers["x-ratelimit-limit-requests"] == "3"
    clock.now += 30
    limiter.admit([scope(rpm=3)], 0)


def test_success_headers_count_down() -> None:
    limiter = MemoryLimiter(Clock())
    first = limiter.admit([scope(rpm=5, tpm=100)], 30)
    assert first.headers["x-ratelimit-remaining-requests"] == "4"
    assert first.headers["x-ratelimit-remaining-tokens"] == "70"
    assert first.headers["x-ratelimit-reset-requests"] == "1m0s"


def test_tokens_reserve_worst_case_and_settle_to_actual() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    held = limiter.admit([scope(tpm=100)], 80)
    with pytest.raises(RateLimited) as info:
        limiter.admit([scope(tpm=100)], 30)
    assert info.value.code == "tokens_limit_exceeded"
    held.settle(20)  # the request used far less than it reserved
    after = limiter.admit([scope(tpm=100)], 30)
    assert after.headers["x-ratelimit-remaining-tokens"] == "50"


def test_request_larger_than_the_limit_can_never_fit() -> None:
    limiter = MemoryLimiter(Clock())
    with pytest.raises(RateLimited) as info:
        limiter.admit([scope(tpm=100)], 101)
    assert info.value.code == "request_too_large"


def test_concurrency_frees_on_settle() -> None:
    limiter = MemoryLimiter(Clock())
    held = limiter.admit([scope(max_parallel=1)], 0)
    with pytest.raises(RateLimited) as info:
        limiter.admit([scope(max_parallel=1)], 0)
    assert info.value.code == "concurrency_limit_exceeded"
    held.settle(0)
    held.settle(0)  # idempotent: the slot is not freed twice
    limiter.admit([scope(max_parallel=1)], 0)
    with pytest.raises(RateLimited):
        limiter.admit([scope(max_parallel=1)], 0)


def test_all_scopes_or_none() -> None:
    limiter = MemoryLimiter(Clock())
    key = Scope("key:a", Limits(rpm=10))
    team = Scope("team:t", Limits(rpm=1))
    limiter.admit([key, team], 0)
    with pytest.raises(RateLimited):
        limiter.admit([key, team], 0)
    # The refused request did not consume the key's window.
    assert limiter.admit([key], 0).headers["x-ratelimit-remaining-requests"] == "8"


def test_a_burst_leaves_the_window_exactly_with_settles_in_between() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    held = [limiter.admit([scope(tpm=10**6)], 10) for _ in range(5000)]
    for hold in held[::2]:
        hold.settle(4)  # half used less than reserved
    clock.now += 30
    late = limiter.admit([scope(tpm=10**6)], 7)
    # 2500 x 4 + 2500 x 10 + 7 in the window.
    assert late.headers["x-ratelimit-remaining-tokens"] == str(10**6 - 35_007)
    clock.now += 30.5  # the burst has left the window; the late request has not
    for hold in held[1::2]:
        hold.settle(1)  # settling after expiry changes nothing
    after = limiter.admit([scope(tpm=10**6)], 0)
    assert after.headers["x-ratelimit-remaining-tokens"] == str(10**6 - 7)

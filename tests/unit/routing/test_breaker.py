from __future__ import annotations

from inferplane.routing.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_probes_after_cooldown() -> None:
    clock, changes = Clock(), []
    b = CircuitBreaker(3, 2.0, clock=clock, on_change=lambda old, new: changes.append(new))
    b.failure()
    b.failure()
    b.success()  # a success resets the count
    b.failure()
    b.failure()
    assert b.state == CLOSED and b.allow()
    b.failure()
    assert b.state == OPEN and not b.allow() and not b.available()
    clock.now += 1.9
    assert not b.allow()
    clock.now += 0.2
    assert b.available()
    assert b.allow()  # the one probe
    assert b.state == HALF_OPEN
    assert not b.allow()  # no second request while the probe runs
    b.success()
    assert b.state == CLOSED and b.allow()
    assert changes == [OPEN, HALF_OPEN, CLOSED]


def test_a_failed_probe_reopens_for_longer_up_to_the_cap() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 1.0, max_cooldown_s=3.0, clock=clock)
    b.failure()
    for expected in (2.0, 3.0, 3.0):
        clock.now += b.cooldown_s
        assert b.allow()
        b.failure()
        assert b.state == OPEN and b.cooldown_s == expected
    clock.now += 3.0
    assert b.allow()
    b.success()
    assert b.cooldown_s == 1.0  # back to the base once closed


def test_a_probe_without_verdict_lets_another_probe() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 1.0, clock=clock)
    b.failure()
    clock.now += 1.0
    assert b.allow() and not b.allow()
    b.release()  # the caller went away before the upstream answered
    assert b.allow()


def test_a_passed_health_check_lets_a_probe_through_before_the_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 300.0, clock=clock)
    b.failure()
    assert not b.allow()
    b.half_open_now()
    assert b.state == HALF_OPEN and b.allow() and not b.allow()
    b.success()
    assert b.state == CLOSED

"""Every way an attempt ends leaves its deployment as it found it: nothing in flight, the
engine's stream closed, and a half-open breaker's probe settled (closed, reopened) or
handed back, with the metric callback told exactly what counted. test_attempts.py pins
the retry policy; these pin the attempt's bookkeeping, the endings it does not reach:
the caller leaving mid-answer or at its end, a cancelled request, an engine's own bug."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from inferplane.errors import Overloaded, UpstreamError
from inferplane.events import Finished, GenerationEvent, Started, TextDelta
from inferplane.routing.breaker import CLOSED, HALF_OPEN, OPEN
from inferplane.routing.deployments import Alias, Deployment
from inferplane.routing.router import Attempts, attempts
from tests.unit.routing.test_attempts import (
    Clock,
    FailAfter,
    FailBefore,
    FakeEngine,
    Hang,
    Outcome,
    Serve,
    _alias,
    _dep,
    _engine,
    _err,
)


@dataclass
class Ending:
    state: Attempts = field(default_factory=Attempts)
    events: list[GenerationEvent] = field(default_factory=list)
    outcomes: list[tuple[str, str]] = field(default_factory=list)  # from on_attempt
    error: BaseException | None = None
    # Per deployment, as the attempts ended (before asyncio.run's shutdown would close
    # any stream left open): (in flight, streams closed, streams opened).
    left: dict[str, tuple[int, int, int]] = field(default_factory=dict)


def _run(owner: Alias, dep: Deployment) -> AsyncIterator[GenerationEvent]:
    assert isinstance(dep.engine, FakeEngine)
    messages = [{"role": "user", "content": "hi"}]
    return dep.engine.request(
        "chat.completions", {"messages": messages}, {}, stream=True, prompt_estimate=3
    )


async def _read(alias: Alias, plan: list[tuple[Alias, Deployment]], take: int | None) -> Ending:
    """Read the attempts' events; with `take`, stop after that many and close the
    generator, as a caller that hangs up does."""
    end = Ending()
    gen = attempts(
        alias, plan, _run, end.state, on_attempt=lambda o, d, x: end.outcomes.append((d.name, x))
    )
    try:
        async for event in gen:
            end.events.append(event)
            if take is not None and len(end.events) >= take:
                break
    except Exception as exc:
        end.error = exc
    finally:
        await gen.aclose()
    end.left = {d.name: _left(d) for _, d in plan}
    return end


def _left(dep: Deployment) -> tuple[int, int, int]:
    return dep.in_flight, _engine(dep).closed, len(_engine(dep).calls)


def _probing(*outcomes: Outcome) -> tuple[Deployment, Clock]:
    """A deployment whose breaker is half-open: the next request takes its one probe."""
    clock = Clock()
    dep = _dep("a", *outcomes, failures=1, cooldown_s=1.0, clock=clock)
    dep.breaker.failure()
    clock.now += 1.0
    assert dep.breaker.available()
    return dep, clock


def _assert_left_clean(left: tuple[int, int, int]) -> None:
    in_flight, closed, opened = left
    assert in_flight == 0
    assert closed == opened  # every stream ran its cleanup


broken = UpstreamError("connection reset", reason="stream")


@pytest.mark.parametrize(
    ("outcome", "take", "breaker", "metric", "counted"),
    [
        (Serve(), None, CLOSED, "success", (1, 0)),
        (FailBefore(_err("server_error")), None, OPEN, "retry", (1, 1)),
        (FailBefore(_err("invalid")), None, HALF_OPEN, "failure", (0, 0)),
        (FailBefore(_err("context_length")), None, HALF_OPEN, "retry", (0, 0)),
        (FailAfter(("Hel",), broken), None, OPEN, "failure", (1, 1)),
        # The caller hangs up after the (held) Started, or mid-answer: no verdict.
        (Serve(), 1, HALF_OPEN, None, (0, 0)),
        (Serve(("Hel", "lo")), 2, HALF_OPEN, None, (0, 0)),
        # ... or once Finished is in hand: served, though it never read the end.
        (Serve(("Hi",)), 3, CLOSED, "success", (1, 0)),
    ],
    ids=[
        "served",
        "failed-before-first-token",
        "invalid-request",
        "refused-here",
        "failed-after-first-token",
        "caller-left-at-started",
        "caller-left-mid-answer",
        "caller-left-at-finished",
    ],
)
def test_every_ending_settles_the_probe_and_closes_the_stream(
    outcome: Outcome, take: int | None, breaker: str, metric: str | None, counted: tuple[int, int]
) -> None:
    dep, _ = _probing(outcome)
    alias = _alias(dep, max_attempts=1)
    end = asyncio.run(_read(alias, [(alias, dep)], take))
    _assert_left_clean(end.left["a"])
    assert dep.breaker.state == breaker
    if breaker == HALF_OPEN:
        assert dep.breaker.available()  # the probe was handed back: the next may probe
    assert end.outcomes == ([] if metric is None else [("a", metric)])
    assert (dep.requests, dep.failures) == counted
    if metric == "success":
        assert dep.ewma_ttft_s is not None and dep.ewma_duration_s is not None
    if take is not None:
        assert end.error is None and len(end.events) == take


def test_started_comes_out_only_with_the_first_real_event() -> None:
    """The caller that hangs up at Started has been served by the deployment already."""
    dep, _ = _probing(Serve(("Hi",)))
    alias = _alias(dep)
    end = asyncio.run(_read(alias, [(alias, dep)], take=1))
    assert [type(e) for e in end.events] == [Started]
    assert end.state.served_by == (alias, dep) and end.state.count == 1


def test_a_request_cancelled_while_waiting_hands_the_probe_back() -> None:
    """A cancelled request (a client gone while the upstream is silent): no verdict, the
    hanging stream closed, nothing left in flight; the cancellation goes on up."""
    dep, _ = _probing(Hang())
    alias = _alias(dep, deadline_s=30.0)

    async def go() -> None:
        asked = asyncio.Event()

        def run(owner: Alias, d: Deployment) -> AsyncIterator[GenerationEvent]:
            asked.set()
            return _run(owner, d)

        gen = attempts(alias, [(alias, dep)], run, Attempts())
        task = asyncio.create_task(anext(gen))
        await asked.wait()
        assert dep.in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        _assert_left_clean(_left(dep))
        await gen.aclose()

    asyncio.run(go())
    assert dep.breaker.state == HALF_OPEN and dep.breaker.available()
    assert (dep.requests, dep.failures) == (0, 0)


def test_an_engine_bug_is_no_verdict_and_reaches_the_caller() -> None:
    """An error outside the exception tree (an engine's bug) is not retried nor held
    against the deployment's health; the stream is still closed."""
    dep, _ = _probing()
    closed: list[bool] = []

    async def buggy(owner: Alias, d: Deployment) -> AsyncIterator[GenerationEvent]:
        try:
            yield Started(prompt_tokens=3)
            raise RuntimeError("a bug")
        finally:
            closed.append(True)

    async def go() -> Ending:
        end = Ending()
        alias = _alias(dep, max_attempts=3)

        def on_attempt(owner: Alias, d: Deployment, outcome: str) -> None:
            end.outcomes.append((d.name, outcome))

        gen = attempts(alias, [(alias, dep)], buggy, end.state, on_attempt=on_attempt)
        with pytest.raises(RuntimeError, match="a bug"):
            async for event in gen:
                end.events.append(event)
        return end

    end = asyncio.run(go())
    assert closed == [True] and dep.in_flight == 0 and end.events == []
    assert end.state.count == 1 and end.outcomes == []
    assert dep.breaker.state == HALF_OPEN and dep.breaker.available()


def test_nothing_left_in_flight_after_failover_and_backoff() -> None:
    """Retries over two deployments, one of them twice: each attempt's stream closed,
    each deployment's in-flight count back to zero, each verdict counted once."""
    fail = FailBefore(_err("server_error"))
    a = _dep("a", fail, Serve(("a",)))
    b = _dep("b", FailBefore(_err("rate_limited", retry_after=30.0)))
    alias = _alias(a, b, max_attempts=3)
    end = asyncio.run(_read(alias, [(alias, a), (alias, b)], None))
    assert end.error is None and end.state.served_by == (alias, a) and end.state.count == 3
    assert end.outcomes == [("a", "retry"), ("b", "retry"), ("a", "success")]
    _assert_left_clean(end.left["a"])
    _assert_left_clean(end.left["b"])
    assert (a.requests, a.failures, b.requests, b.failures) == (2, 1, 1, 1)
    assert isinstance(end.events[-1], Finished)
    assert [type(e) for e in end.events] == [Started, TextDelta, Finished]


def test_a_backoff_into_the_deadline_hands_the_probe_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A half-open deployment that was overloaded (no verdict) is come back to; its
    probe is taken, the backoff runs into the deadline and no attempt is made: the probe
    is handed back, or the deployment would stay unprobed until a verdict that never comes."""
    monkeypatch.setattr(random, "uniform", lambda lo, hi: hi)  # the longest pause
    full = Overloaded(model="a", queued=4, max_queued=4)
    dep, _ = _probing(FailBefore(full), Serve())
    alias = _alias(dep, max_attempts=3, backoff_base_s=10, backoff_max_s=10, deadline_s=0.1)
    end = asyncio.run(_read(alias, [(alias, dep)], None))
    assert end.error is full and end.state.count == 1 and end.outcomes == [("a", "retry")]
    _assert_left_clean(end.left["a"])
    assert dep.breaker.state == HALF_OPEN and dep.breaker.available()

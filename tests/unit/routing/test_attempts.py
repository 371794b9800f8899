"""The router's attempt loop against scripted fake engines: failover, what is (not)
retried, Retry-After, backoff, breaker transitions, max_attempts, fallbacks, deadlines."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from inferplane.config.routes import RemoteDeployment
from inferplane.engines.remote.base import RemoteEngine
from inferplane.errors import (
    InferplaneError,
    Unavailable,
    UpstreamError,
    UpstreamResponseTooLarge,
)
from inferplane.events import Finished, GenerationEvent, Started, TextDelta
from inferplane.routing.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from inferplane.routing.deployments import Alias, Deployment
from inferplane.routing.router import Attempts, Router, attempts
from inferplane.routing.strategies import RouteRequest
from tests.unit.scripts import FailAfter, FailBefore, Hang, Script, Scripted, Serve

# --- a scripted remote engine -------------------------------------------------------

Outcome = Script


def _err(reason: str, retry_after: float | None = None) -> UpstreamError:
    return UpstreamError(f"upstream said {reason}", reason=reason, retry_after=retry_after)


class FakeEngine(Scripted, RemoteEngine):
    """A remote engine whose calls follow a script, one outcome per call."""

    def __init__(self, name: str, outcomes: list[Outcome], **spec: Any):
        super().__init__(name, list(outcomes))
        self.spec = RemoteDeployment.model_validate(
            {
                "name": name,
                "engine": "openai_compatible",
                "base_url": "http://127.0.0.1:9/v1",
                "model": "m",
                **spec,
            }
        )
        self.calls: list[float] = []  # time.monotonic() of each request()

    def request(
        self,
        endpoint: str,
        prompt_input: dict[str, Any],
        sampling: dict[str, Any],
        *,
        stream: bool,
        prompt_estimate: int,
    ) -> AsyncIterator[GenerationEvent]:
        self.calls.append(time.monotonic())
        return self.play(prompt_tokens=3)

    async def check(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass


def _dep(
    name: str,
    *outcomes: Outcome,
    failures: int = 5,
    cooldown_s: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    on_change: Callable[[str, str], None] | None = None,
    **spec: Any,
) -> Deployment:
    engine = FakeEngine(name, list(outcomes), **spec)
    breaker = CircuitBreaker(failures, cooldown_s, clock=clock, on_change=on_change)
    return Deployment(name, engine.spec, breaker, engine)


def _engine(dep: Deployment) -> FakeEngine:
    assert isinstance(dep.engine, FakeEngine)
    return dep.engine


def _alias(*deps: Deployment, **knobs: Any) -> Alias:
    knobs = {"max_attempts": 3, "backoff_base_s": 0.001, "backoff_max_s": 0.004, **knobs}
    return Alias("main", list(deps), **knobs)


def _plan(alias: Alias, *deps: Deployment) -> list[tuple[Alias, Deployment]]:
    return [(alias, d) for d in (deps or alias.deployments)]


@dataclass
class Result:
    state: Attempts = field(default_factory=Attempts)
    events: list[GenerationEvent] = field(default_factory=list)
    outcomes: list[tuple[str, str]] = field(default_factory=list)  # from on_attempt
    runs: list[tuple[str, str]] = field(default_factory=list)  # (owner alias, deployment)
    error: InferplaneError | None = None
    elapsed_s: float = 0.0
    ticks: list[float] = field(default_factory=list)  # see _request's tick_s

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))


def _request(
    alias: Alias, plan: list[tuple[Alias, Deployment]], *, tick_s: float | None = None
) -> Result:
    """One request through `attempts`, read to its end, as pipeline/service.py does;
    with `tick_s`, a task beside it notes when the event loop was free (`ticks`)."""
    res = Result()

    def run(owner: Alias, dep: Deployment) -> AsyncIterator[GenerationEvent]:
        res.runs.append((owner.id, dep.name))
        assert isinstance(dep.engine, RemoteEngine)
        messages = [{"role": "user", "content": "hi"}]
        return dep.engine.request(
            "chat.completions", {"messages": messages}, {}, stream=True, prompt_estimate=3
        )

    def on_attempt(owner: Alias, dep: Deployment, outcome: str) -> None:
        res.outcomes.append((dep.name, outcome))

    async def ticker(interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            res.ticks.append(time.monotonic())

    async def go() -> None:
        beside = asyncio.create_task(ticker(tick_s)) if tick_s is not None else None
        try:
            async for event in attempts(alias, plan, run, res.state, on_attempt=on_attempt):
                res.events.append(event)
        except InferplaneError as exc:
            res.error = exc
        finally:
            if beside is not None:
                beside.cancel()

    started = time.monotonic()
    asyncio.run(go())
    res.elapsed_s = time.monotonic() - started
    return res


# --- failover and what is not retried -------------------------------------------------


def test_failure_before_first_token_fails_over_to_the_next_deployment() -> None:
    """A 5xx before the first token moves on; the next deployment serves the request."""
    a, b = _dep("a", FailBefore(_err("server_error"))), _dep("b", Serve(("Hi", "!")))
    alias = _alias(a, b)
    res = _request(alias, _plan(alias))
    assert res.error is None and res.text == "Hi!"
    assert res.state.count == 2 and res.state.served_by == (alias, b)
    assert res.outcomes == [("a", "retry"), ("b", "success")]
    # The failed attempt's Started is not passed on: the caller sees one answer.
    assert [type(e) for e in res.events] == [Started, TextDelta, TextDelta, Finished]
    assert (a.breaker.consecutive_failures, a.failures, a.requests) == (1, 1, 1)
    assert (b.failures, b.requests) == (0, 1) and b.ewma_ttft_s is not None
    assert a.in_flight == b.in_flight == 0
    assert _engine(a).closed == _engine(b).closed == 1


def test_failure_after_first_token_is_not_retried() -> None:
    """A stream broken after its first token ends the request after the text delivered."""
    broken = UpstreamError("connection reset", reason="stream")
    a, b = _dep("a", FailAfter(("Hel",), broken)), _dep("b", Serve())
    alias = _alias(a, b)
    res = _request(alias, _plan(alias))
    assert res.error is broken
    assert [type(e) for e in res.events] == [Started, TextDelta] and res.text == "Hel"
    assert _engine(b).calls == []
    assert res.state.count == 1 and res.state.served_by == (alias, a)
    assert res.outcomes == [("a", "failure")]
    assert a.breaker.consecutive_failures == 1 and a.failures == 1  # counts against it


def test_invalid_request_is_not_retried_anywhere() -> None:
    """An upstream's 'invalid' refusal reaches the caller at once, as a 400."""
    invalid = _err("invalid")
    a, b = _dep("a", FailBefore(invalid), failures=1), _dep("b", Serve())
    alias = _alias(a, b)
    res = _request(alias, _plan(alias))
    assert res.error is invalid and res.error.status == 400
    assert _engine(b).calls == [] and res.events == []
    assert res.state.count == 1 and res.state.served_by is None
    assert res.outcomes == [("a", "failure")]
    # The request's own fault: not a mark against the deployment (one would open it).
    assert a.breaker.state == CLOSED and a.breaker.consecutive_failures == 0 and a.failures == 0


@pytest.mark.parametrize("reason", ["context_length", "content_filter"])
def test_request_refused_by_a_deployment_excludes_it_without_a_breaker_mark(reason: str) -> None:
    """Too long / filtered: the deployment is not asked again within the request, and its
    breaker (which one counted failure would open) stays closed."""
    a = _dep("a", FailBefore(_err(reason)), failures=1)
    b = _dep("b", FailBefore(_err("server_error")), Serve())
    alias = _alias(a, b, max_attempts=5)
    res = _request(alias, _plan(alias))
    assert res.error is None and res.state.served_by == (alias, b)
    assert res.runs == [("main", "a"), ("main", "b"), ("main", "b")]  # a not asked again
    assert res.state.count == 3
    assert a.breaker.state == CLOSED and a.breaker.consecutive_failures == 0
    assert (a.failures, a.requests) == (0, 0)

    # Alone, it is asked once; the caller gets its refusal (a 400) with attempts to spare.
    refusal = _err(reason)
    alone = _dep("alone", FailBefore(refusal), failures=1)
    alias = _alias(alone, max_attempts=5)
    res = _request(alias, _plan(alias))
    assert res.error is refusal and res.error.status == 400
    assert res.state.count == 1 and len(_engine(alone).calls) == 1
    assert alone.breaker.state == CLOSED


# --- Retry-After and backoff --------------------------------------------------------


def test_retry_after_skips_the_deployment_until_it_passes() -> None:
    """A 429's Retry-After sets not_before: the deployment is skipped (and planned last)
    while another can serve."""
    a = _dep("a", FailBefore(_err("rate_limited", retry_after=30.0)))
    b = _dep("b", Serve(), Serve())
    alias = _alias(a, b)
    before = time.monotonic()
    res = _request(alias, _plan(alias))
    assert res.error is None and res.state.served_by == (alias, b)
    assert res.outcomes == [("a", "retry"), ("b", "success")]
    assert a.not_before >= before + 30.0 and not a.ready()

    # The next request skips it without asking, though it comes first in the plan.
    res = _request(alias, _plan(alias, a, b))
    assert res.error is None and res.runs == [("main", "b")] and res.state.count == 1
    assert len(_engine(a).calls) == 1
    # Router.plan puts it after the deployments that are ready, but keeps it.
    planned = Router({"main": alias}).plan(alias, RouteRequest())
    assert [d.name for _, d in planned] == ["b", "a"]


def test_short_retry_after_is_waited_out_when_nothing_else_can_serve() -> None:
    """Alone, a deployment's short Retry-After is waited for, then it is asked again."""
    a = _dep("a", FailBefore(_err("rate_limited", retry_after=0.05)), Serve(("ok",)))
    alias = _alias(a)
    res = _request(alias, _plan(alias), tick_s=0.002)
    assert res.error is None and res.text == "ok"
    assert res.state.count == 2 and res.outcomes == [("a", "retry"), ("a", "success")]
    first, second = _engine(a).calls
    assert second >= a.not_before - 1e-3  # not asked before its Retry-After ended
    assert second - first >= 0.04
    assert res.elapsed_s < 2.0
    # It sleeps, not spins: the event loop ran other work while it waited.
    refused_at = a.not_before - 0.05
    assert any(refused_at < t < a.not_before for t in res.ticks)


def test_a_retry_after_that_ends_while_the_round_looks_elsewhere_is_still_waited_for() -> None:
    """A's Retry-After ends after the round skipped it but while it still looked at
    another deployment (here b, whose breaker's clock is slow): the loop comes back to a
    instead of giving up with a's 429. (A race CI met once: a timer that fired a hair
    early, then the Retry-After ending between two readings of the clock.)"""
    a = _dep("a", FailBefore(_err("rate_limited", retry_after=0.05)), Serve(("ok",)))
    readings = 0

    def slow_clock() -> float:
        nonlocal readings
        readings += 1
        if readings == 3:  # b's check in the round that skipped a
            time.sleep(max(0.0, a.not_before - time.monotonic()) + 0.005)
        return time.monotonic()

    b = _dep("b", failures=1, clock=slow_clock)
    b.breaker.failure()  # open for a minute (the first reading)
    alias = _alias(a, b)
    res = _request(alias, _plan(alias))
    assert res.error is None and res.text == "ok"
    assert res.runs == [("main", "a"), ("main", "a")]
    assert readings == 3  # b was asked in the first two rounds; a served in the third


@pytest.mark.parametrize(
    ("retry_after", "deadline_s"),
    [(11.0, 120.0), (5.0, 2.0)],
    ids=["longer-than-the-router-waits", "past-the-deadline"],
)
def test_long_retry_after_is_not_waited_out(retry_after: float, deadline_s: float) -> None:
    """A Retry-After past the longest wait (10 s) or the deadline: the caller gets the
    upstream's 429 at once."""
    limited = _err("rate_limited", retry_after=retry_after)
    a = _dep("a", FailBefore(limited))
    alias = _alias(a, deadline_s=deadline_s)
    res = _request(alias, _plan(alias))
    assert res.error is limited and res.error.status == 429
    assert res.error.headers == {"Retry-After": str(int(retry_after))}
    assert res.state.count == 1
    assert res.elapsed_s < 1.0


def test_coming_back_to_a_failed_deployment_backs_off_exponentially(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only a second (third...) attempt at the same deployment waits, a jittered pause
    drawn from [0, min(backoff_max_s, backoff_base_s * 2**failures)]."""
    drawn: list[tuple[float, float, float]] = []
    uniform = random.uniform

    def spy(lo: float, hi: float) -> float:
        value = uniform(lo, hi)
        drawn.append((lo, hi, value))
        return value

    monkeypatch.setattr(random, "uniform", spy)
    fail = FailBefore(_err("server_error"))
    a = _dep("a", fail, fail, Serve())
    b = _dep("b", fail, fail)
    alias = _alias(a, b, max_attempts=5, backoff_base_s=0.004, backoff_max_s=0.012)
    res = _request(alias, _plan(alias))
    assert res.error is None and res.state.served_by == (alias, a) and res.state.count == 5
    assert [name for _, name in res.runs] == ["a", "b", "a", "b", "a"]
    # The first round has no pause; then 2 * base each, then capped at backoff_max_s.
    assert [(lo, hi) for lo, hi, _ in drawn] == [(0, 0.008), (0, 0.008), (0, 0.012)]
    assert all(0 <= value <= hi for _, hi, value in drawn)
    calls_a, calls_b = _engine(a).calls, _engine(b).calls
    order = [calls_a[0], calls_b[0], calls_a[1], calls_b[1], calls_a[2]]
    # Each pause comes before the attempt it delays: after the first round.
    gaps = [later - earlier for earlier, later in itertools.pairwise(order[1:])]
    assert all(gap >= value - 1e-3 for gap, (_, _, value) in zip(gaps, drawn, strict=True))
    assert res.elapsed_s <= 0.008 + 0.008 + 0.012 + 1.0


# --- the breaker ----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_fails_fast_probes_and_closes() -> None:
    """failures=2: two failures open it; open, it is skipped (alone: fails fast with
    Unavailable); after the cooldown one probe passes and its success closes it."""
    clock, changes = Clock(), []
    fail = FailBefore(_err("server_error"))
    a = _dep("a", fail, fail, Serve(("probe",)), failures=2, cooldown_s=1.0, clock=clock,
             on_change=lambda old, new: changes.append(new))  # fmt: skip
    b = _dep("b", Serve(("b",)), Serve(("b",)))
    alias = _alias(a, b, max_attempts=3)

    # Two failures in a row open it; the third attempt allowed is not made.
    res = _request(alias, _plan(alias, a))
    assert res.error is not None and res.error.code == "upstream_error"
    assert res.state.count == 2 and len(_engine(a).calls) == 2
    assert a.breaker.state == OPEN and changes == [OPEN]

    # Open: skipped for another deployment, or, alone, the caller gets a 503 at once.
    res = _request(alias, _plan(alias, a, b))
    assert res.text == "b" and res.runs == [("main", "b")]
    res = _request(alias, _plan(alias, a))
    assert isinstance(res.error, Unavailable) and res.error.status == 503
    assert res.state.count == 0 and len(_engine(a).calls) == 2

    # After the cooldown: one probe (half-open); its success closes the breaker.
    clock.now += 1.0
    res = _request(alias, _plan(alias, a, b))
    assert res.text == "probe" and res.state.served_by == (alias, a)
    assert a.breaker.state == CLOSED and changes == [OPEN, HALF_OPEN, CLOSED]
    assert a.breaker.consecutive_failures == 0


def test_failing_probe_reopens_the_breaker_for_longer() -> None:
    """A half-open probe that fails opens the breaker again, its cooldown doubled; the
    request still goes on to another deployment."""
    clock, changes = Clock(), []
    fail = FailBefore(_err("timeout"))
    a = _dep("a", fail, fail, failures=1, cooldown_s=1.0, clock=clock,
             on_change=lambda old, new: changes.append(new))  # fmt: skip
    b = _dep("b", Serve(("b",)), Serve(("b",)), Serve(("b",)))
    alias = _alias(a, b)
    assert _request(alias, _plan(alias, a, b)).text == "b"
    assert a.breaker.state == OPEN

    clock.now += 1.0
    res = _request(alias, _plan(alias, a, b))
    assert res.text == "b" and res.outcomes == [("a", "retry"), ("b", "success")]
    assert changes == [OPEN, HALF_OPEN, OPEN] and a.breaker.cooldown_s == 2.0

    # One more base cooldown is not enough now: it is skipped.
    clock.now += 1.0
    res = _request(alias, _plan(alias, a, b))
    assert res.runs == [("main", "b")] and len(_engine(a).calls) == 2


def test_answer_too_large_is_no_breaker_mark_and_releases_the_probe() -> None:
    """UpstreamResponseTooLarge: the deployment is left out for the request only; its
    breaker is not marked, and a half-open probe ending so lets the next request probe."""
    clock = Clock()
    a = _dep("a", FailBefore(UpstreamResponseTooLarge("a", 1024)), failures=1, clock=clock)
    b = _dep("b", FailBefore(_err("server_error")), Serve())
    alias = _alias(a, b, max_attempts=5)
    res = _request(alias, _plan(alias))
    assert res.error is None and res.state.served_by == (alias, b)
    assert [name for _, name in res.runs] == ["a", "b", "b"]  # a not asked again
    assert a.breaker.state == CLOSED and (a.breaker.consecutive_failures, a.failures) == (0, 0)

    # Half-open, a probe answering too large leaves it half-open, not probing.
    a.breaker.failure()
    clock.now += 60.0
    _engine(a).script = [FailBefore(UpstreamResponseTooLarge("a", 1024)), Serve(("a",))]
    _engine(b).script = [Serve()]
    res = _request(alias, _plan(alias))
    assert res.state.served_by == (alias, b) and a.breaker.state == HALF_OPEN
    res = _request(alias, _plan(alias))
    assert res.text == "a" and a.breaker.state == CLOSED


# --- max_attempts and fallbacks -----------------------------------------------------


def test_fallback_alias_serves_when_every_deployment_of_the_alias_fails() -> None:
    """Router.plan appends the fallback alias's deployments (each alias once); they serve
    under their own alias when the alias's own deployments fail."""
    a = _dep("a", FailBefore(_err("server_error")))
    b = _dep("b", FailBefore(_err("connection")))
    c = _dep("c", Serve(("from backup",)))
    main = _alias(a, b, fallbacks=["backup"], max_attempts=3)
    backup = Alias("backup", [c], fallbacks=["main"])  # a cycle: each alias is planned once
    plan = Router({"main": main, "backup": backup}).plan(main, RouteRequest())
    assert {d.name for _, d in plan[:2]} == {"a", "b"}
    assert [(o.id, d.name) for o, d in plan[2:]] == [("backup", "c")]
    res = _request(main, plan)
    assert res.error is None and res.text == "from backup"
    assert res.state.count == 3 and res.state.served_by == (backup, c)
    assert res.runs[-1] == ("backup", "c")


def test_fallbacks_are_planned_depth_first_each_alias_once() -> None:
    """main -> [x, y], x -> [z, main], y -> [z]: main's, x's, z's, then y's deployments."""
    deps = {name: _dep(name, Serve()) for name in ("m", "x", "y", "z")}
    aliases = {
        "main": Alias("main", [deps["m"]], fallbacks=["x", "y", "missing"]),
        "x": Alias("x", [deps["x"]], fallbacks=["z", "main"]),
        "y": Alias("y", [deps["y"]], fallbacks=["z"]),
        "z": Alias("z", [deps["z"]]),
    }
    plan = Router(aliases).plan(aliases["main"], RouteRequest())
    assert [(o.id, d.name) for o, d in plan] == [("main", "m"), ("x", "x"), ("z", "z"), ("y", "y")]


def test_max_attempts_bounds_retries_and_fallbacks() -> None:
    """max_attempts of the requested alias counts every attempt: retries of one
    deployment and the fallback alias's alike; the last failure reaches the caller."""
    first, second = _err("server_error"), _err("connection")
    a = _dep("a", FailBefore(first))
    b = _dep("b", FailBefore(second))
    c = _dep("c", Serve())
    main = _alias(a, b, fallbacks=["backup"], max_attempts=2)
    backup = Alias("backup", [c], max_attempts=5)
    res = _request(main, [*_plan(main), (backup, c)])
    assert res.error is second and res.state.count == 2
    assert _engine(c).calls == [] and res.outcomes == [("a", "retry"), ("b", "retry")]

    # One deployment failing over and over is asked max_attempts times, no more.
    fail = FailBefore(_err("server_error"))
    alone = _dep("alone", fail, fail, fail, fail)
    alias = _alias(alone, max_attempts=3)
    res = _request(alias, _plan(alias))
    assert isinstance(res.error, UpstreamError) and res.state.count == 3
    assert len(_engine(alone).calls) == 3 and len(_engine(alone).script) == 1


# --- deadlines ------------------------------------------------------------------------


def test_attempt_waiting_past_the_deadline_is_abandoned_with_a_timeout() -> None:
    """An upstream silent past alias.deadline_s: the attempt is cancelled and the caller
    gets a 504 timeout; no other deployment is tried after the deadline."""
    a = _dep("a", Hang())
    b = _dep("b", Serve())
    alias = _alias(a, b, deadline_s=0.1, max_attempts=3)
    res = _request(alias, _plan(alias))
    assert isinstance(res.error, UpstreamError)
    assert res.error.reason == "timeout" and res.error.status == 504
    assert res.events == [] and res.state.count == 1 and res.state.served_by is None
    assert _engine(b).calls == []
    assert _engine(a).closed == 1 and a.in_flight == 0  # the hanging stream was closed
    assert a.failures == 1 and a.breaker.consecutive_failures == 1
    assert 0.05 <= res.elapsed_s < 2.0


def test_attempt_timeout_moves_on_to_the_next_deployment() -> None:
    """A deployment's own timeout_s (shorter than the deadline) fails that attempt only;
    the next deployment serves."""
    a = _dep("a", Hang(), timeout_s=0.05)
    b = _dep("b", Serve(("late but fine",)))
    alias = _alias(a, b, deadline_s=30.0)
    res = _request(alias, _plan(alias))
    assert res.error is None and res.text == "late but fine"
    assert res.outcomes == [("a", "retry"), ("b", "success")] and res.state.count == 2
    assert a.failures == 1 and _engine(a).closed == 1
    assert res.elapsed_s < 2.0


def test_a_backoff_that_reaches_the_deadline_makes_no_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pause that runs into the deadline ends the request with the last real error,
    not with an attempt that has no time left (a timeout counted against the breaker)."""
    monkeypatch.setattr(random, "uniform", lambda lo, hi: hi)  # the longest pause
    a = _dep("a", FailBefore(_err("server_error")), Serve())
    alias = _alias(a, max_attempts=3, backoff_base_s=10, backoff_max_s=10, deadline_s=0.1)
    res = _request(alias, _plan(alias))
    assert isinstance(res.error, UpstreamError) and res.error.reason == "server_error"
    assert len(_engine(a).calls) == 1 and res.state.count == 1
    assert a.breaker.consecutive_failures == 1 and a.breaker.state == "closed"

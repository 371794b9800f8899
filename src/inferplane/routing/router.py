"""Aliases -> an ordered plan of deployments, and the attempts that walk it.

A plan is the alias's deployments that policy allows, ordered by its strategy, then the
same for each fallback alias (depth first, each alias once). `attempts` walks it:
a deployment whose breaker is open or whose upstream asked to wait (Retry-After) is
skipped; a failure before the first token reaches the caller moves on to the next
candidate (after an exponential, jittered backoff when the plan comes round again); a
failure after it ends the stream. Every attempt's verdict feeds the deployment's breaker
and latency/error averages, but a failure that says nothing of the deployment's health
(the request too long for it or filtered there, an answer over its `max_response_bytes`)
gives no verdict: the deployment is only left out for the rest of this request.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from inferplane.errors import (
    ContextLengthExceeded,
    InferplaneError,
    Overloaded,
    Unavailable,
    UpstreamError,
)
from inferplane.events import Finished, GenerationEvent, Started
from inferplane.routing.breaker import OPEN
from inferplane.routing.deployments import Alias, Deployment
from inferplane.routing.strategies import RouteRequest, allowed, by_complexity, order

Run = Callable[[Alias, Deployment], AsyncIterator[GenerationEvent]]
# The longest an upstream's Retry-After is waited out when no other deployment can serve.
_MAX_RETRY_AFTER_WAIT_S = 10.0


class Router:
    def __init__(self, aliases: dict[str, Alias]):
        self.aliases = aliases
        self._checks: asyncio.Task[None] | None = None

    def get(self, alias_id: str) -> Alias | None:
        return self.aliases.get(alias_id)

    def deployments(self) -> list[tuple[Alias, Deployment]]:
        return [(a, d) for a in self.aliases.values() for d in a.deployments]

    def reachable(self, alias_id: str) -> list[Deployment]:
        """Every deployment a request to the alias may reach: its own, its fallbacks'."""
        out: list[Deployment] = []
        seen: set[str] = set()
        todo = [alias_id]
        while todo:
            alias = self.aliases.get(todo.pop())
            if alias is None or alias.id in seen:
                continue
            seen.add(alias.id)
            out += alias.deployments
            todo += alias.fallbacks
        return out

    async def aclose(self) -> None:
        """Stop the health checks; close the deployments' engines (connection pools)."""
        if self._checks is not None:
            self._checks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checks
        for _, dep in self.deployments():
            await dep.engine.aclose()

    def start_health_checks(self, interval_s: float) -> None:
        """Active health checks: every `interval_s`, each deployment whose breaker is open
        is checked (a remote one asked for its model list, a local one whether its worker
        is up again); a yes lets the next request probe it at once instead of after the
        rest of the cooldown."""
        self._checks = asyncio.create_task(self._check_loop(interval_s))

    async def _check_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            for _, dep in self.deployments():
                if dep.breaker.state == OPEN and await dep.engine.check():
                    dep.breaker.half_open_now()

    def plan(self, alias: Alias, req: RouteRequest) -> list[tuple[Alias, Deployment]]:
        """The alias's deployments, then each fallback's, depth first, each alias once.
        (A loop, not a recursive closure: that was a reference cycle per request, left
        for the garbage collector with the plan in it.)"""
        out: list[tuple[Alias, Deployment]] = []
        seen: set[str] = set()
        todo = [alias]
        while todo:
            a = todo.pop()
            if a.id in seen:
                continue
            seen.add(a.id)
            ordered = order(a.strategy, [d for d in a.deployments if allowed(d, req)])
            if a.by_complexity:
                long = a.complexity_tokens is not None and req.prompt_tokens > a.complexity_tokens
                ordered = by_complexity(ordered, long or req.complex)
            now = time.monotonic()
            # Healthy ones first; the others stay in the plan, tried if they recover.
            ready = [d for d in ordered if d.ready(now)]
            out.extend((a, d) for d in ready + [d for d in ordered if d not in ready])
            fallbacks = [self.aliases.get(name) for name in a.fallbacks]
            todo.extend(f for f in reversed(fallbacks) if f is not None)
        return out


class AttemptLog(Protocol):
    """Where the attempt loop writes what it learns of a request (the pipeline's
    `Outcome`; `Attempts` where nothing else reads it)."""

    def attempted(self) -> None:
        """One more attempt began."""
        ...

    def delivered(self, owner: Alias, dep: Deployment) -> None:
        """The attempt at `dep` (of alias `owner`) is the one the caller is answered by."""
        ...


@dataclass
class Attempts:
    """The attempts of one request: how many, and which deployment served it."""

    count: int = 0
    served_by: tuple[Alias, Deployment] | None = None

    def attempted(self) -> None:
        self.count += 1

    def delivered(self, owner: Alias, dep: Deployment) -> None:
        self.served_by = (owner, dep)


OnAttempt = Callable[[Alias, Deployment, str], None]


async def attempts(
    alias: Alias,
    plan: list[tuple[Alias, Deployment]],
    run: Run,
    log: AttemptLog,
    *,
    on_attempt: OnAttempt = lambda a, d, outcome: None,
) -> AsyncGenerator[GenerationEvent, None]:
    """Run the plan until one attempt delivers; yields that attempt's events. The retry
    policy, in rounds over the plan (`_Attempt` does each attempt's bookkeeping):

    1. Stop at the alias's `max_attempts` (every attempt counts, fallbacks' too) or its
       deadline. Skip a deployment that refused this request, whose upstream asked to
       wait (Retry-After), or whose breaker lets no request through.
    2. Coming back to a deployment that failed this request, back off first. A pause
       that runs into the deadline makes no attempt (its timeout would mark the
       deployment): the caller gets the last real error.
    3. Attempt it. Delivered, or failed after the first token or in a way no retry
       mends (raised to the caller): done. Failed before the first token: note it (a
       refusal leaves the deployment out for this request) and go on.
    4. After a round in which nothing could be tried, wait out the shortest Retry-After
       if it ends soon and before the deadline; else stop (open breakers fail fast).
       The caller gets the last failure, or Unavailable if nothing was tried.
    """
    deadline, tried = time.monotonic() + alias.deadline_s, 0
    last: InferplaneError | None = None
    failed_here: dict[str, int] = {}
    excluded: set[str] = set()  # cannot serve this request at all (too long, refused)
    while tried < alias.max_attempts and plan:
        progressed, held = False, list[float]()  # held: Retry-After ends of those skipped
        for owner, dep in plan:
            now = time.monotonic()
            if tried >= alias.max_attempts or now >= deadline:
                break
            if _passed_by(dep, excluded, held, now):
                continue
            progressed = True
            failures = failed_here.get(dep.name, 0)
            if failures and not await _back_off(alias, failures, now, deadline):
                dep.breaker.release()  # allowed, but no attempt made: no verdict
                break
            tried += 1
            async with _Attempt(owner, dep, run, log, deadline, on_attempt) as attempt:
                for event in await attempt.opening():
                    yield event
                async for event in attempt.stream:  # straight from the engine
                    if isinstance(event, Finished):
                        attempt.served()
                    yield event
            if attempt.retry is None:
                return  # delivered (a failure that ends the request has been raised)
            last = attempt.retry
            failed_here[dep.name] = failures + 1
            if _only_elsewhere(last):
                excluded.add(dep.name)
        if not progressed and not await _wait_out_retry_after(held, deadline):
            break
    if last is not None:
        raise last
    raise Unavailable(f"No deployment of '{alias.id}' can serve this request right now.")


def _passed_by(dep: Deployment, excluded: set[str], held: list[float], now: float) -> bool:
    """Whether this round passes `dep` by: it cannot serve the request, its upstream
    asked to wait (the wait's end goes to `held`), or its breaker lets nothing through.
    Else the breaker's permission is taken."""
    if dep.name in excluded:
        return True
    if dep.not_before > now:
        held.append(dep.not_before)
        return True
    return not dep.breaker.allow()


async def _back_off(alias: Alias, failures: int, now: float, deadline: float) -> bool:
    """The pause before coming back to a deployment that failed this request `failures`
    times: drawn from [0, min(backoff_max_s, backoff_base_s * 2**failures)] (full
    jitter, so concurrent retries spread out), cut at the deadline. Whether time is left
    for an attempt after it."""
    pause = min(alias.backoff_max_s, alias.backoff_base_s * 2**failures)
    await asyncio.sleep(min(random.uniform(0, pause), max(0.0, deadline - now)))
    return time.monotonic() < deadline


async def _wait_out_retry_after(held: list[float], deadline: float) -> bool:
    """No candidate could be tried. Wait for the first of the Retry-Afters that held
    deployments back this round (`held`, their ends) when it ends soon (within
    `_MAX_RETRY_AFTER_WAIT_S`) and before the deadline; whether to go on. One that ended
    since the round skipped its deployment means going on at once: the clock is read
    again here, and a timer may wake a hair early. Open breakers fail fast: waiting out a
    cooldown is left to the caller."""
    if not held:
        return False
    now = time.monotonic()
    wait = max(0.0, min(held) - now)
    if wait > _MAX_RETRY_AFTER_WAIT_S or now + wait >= deadline:
        return False
    await asyncio.sleep(wait)
    return True


def _may_retry(exc: BaseException) -> bool:
    if isinstance(exc, UpstreamError):
        return exc.retryable
    return isinstance(exc, Unavailable | Overloaded | ContextLengthExceeded)


def _counts_against(exc: BaseException) -> bool:
    """Whether the failure says the deployment is unhealthy (feeds its breaker)."""
    if isinstance(exc, UpstreamError):
        return exc.same_deployment_may_succeed
    return isinstance(exc, Unavailable)


def _only_elsewhere(exc: BaseException) -> bool:
    """Whether only another deployment can serve the request (too long here, refused)."""
    if isinstance(exc, UpstreamError):
        return exc.retryable and not exc.same_deployment_may_succeed
    return isinstance(exc, ContextLengthExceeded)


class _Attempt:
    """One attempt at one deployment: its bookkeeping, and its opening.

    Entered, it counts the attempt, marks the deployment in flight and starts `run`.
    Its `opening` waits for the first events: the first must come by the deployment's
    `timeout_s` and the request's deadline, and a `Started` is held back until it (a
    failure before the first token is retried elsewhere; the caller sees one answer).
    The rest is read from `stream` directly; the loop calls `served` when a `Finished`
    goes by.

    On exit it gives its verdict: served (the stream ended, or a `Finished` came even if
    the caller stopped reading there), failed (a failure that says the deployment is
    unhealthy), or none (a failure that says nothing of its health: the request invalid
    or refused there, the answer too large, its queue full; or the caller left): the
    breaker's probe is handed back and nothing is counted. It reports the outcome to
    `on_attempt`, closes the stream, and feeds the verdict to the breaker and the
    deployment's latency/error averages.

    A failure before the first token that another attempt may serve is kept in `retry`
    and not raised (a Retry-After in it holds the deployment back); any other failure
    goes on to the caller.
    """

    def __init__(
        self,
        owner: Alias,
        dep: Deployment,
        run: Run,
        log: AttemptLog,
        deadline: float,
        on_attempt: OnAttempt,
    ):
        self.owner, self.dep = owner, dep
        self._run, self._log, self._deadline = run, log, deadline
        self._on_attempt = on_attempt
        # A failure before the first token that another attempt may mend.
        self.retry: InferplaneError | None = None
        self._delivered = False
        self._verdict: bool | None = None
        self._ttft: float | None = None

    async def __aenter__(self) -> _Attempt:
        self._log.attempted()
        self._started = time.perf_counter()
        self.dep.in_flight += 1
        self.stream = self._run(self.owner, self.dep)
        self._until = self._deadline
        if self.dep.timeout_s is not None:
            self._until = min(self._deadline, time.monotonic() + self.dep.timeout_s)
        return self

    async def opening(self) -> list[GenerationEvent]:
        """The first real event, by `_until`, with a `Started` before it (none if the
        stream ended first)."""
        held: list[GenerationEvent] = []
        try:
            event = await _first(self.stream, self._until, self.dep)
            while isinstance(event, Started):
                held = [event]
                event = await _first(self.stream, self._until, self.dep)
        except StopAsyncIteration:
            return []
        self._delivered = True
        self._ttft = time.perf_counter() - self._started
        self._log.delivered(self.owner, self.dep)
        if isinstance(event, Finished):
            self.served()
        held.append(event)
        return held

    def served(self) -> None:
        """A `Finished` went by: served, even if the caller stops reading here."""
        self._verdict = True

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> bool:
        if exc is None:
            self._verdict = True  # the stream ended
        elif isinstance(exc, InferplaneError):
            self._failed(exc)
        self.dep.in_flight -= 1
        await self.stream.aclose()  # type: ignore[attr-defined]
        self._settle()
        return self.retry is not None  # a retry is the policy's to make, not an error

    def _failed(self, exc: InferplaneError) -> None:
        self._verdict = False if _counts_against(exc) else None
        if self._delivered or not _may_retry(exc):
            self._on_attempt(self.owner, self.dep, "failure")
            return
        self.retry = exc
        if isinstance(exc, UpstreamError) and exc.retry_after:
            self.dep.not_before = time.monotonic() + exc.retry_after
        self._on_attempt(self.owner, self.dep, "retry")

    def _settle(self) -> None:
        """Feed the verdict to the breaker and the deployment's averages."""
        if self._verdict is True:
            self._on_attempt(self.owner, self.dep, "success")
            self.dep.breaker.success()
            self.dep.observe(True, self._ttft, time.perf_counter() - self._started)
        elif self._verdict is False:
            self.dep.breaker.failure()
            self.dep.observe(False)
        else:
            self.dep.breaker.release()


async def _first(
    stream: AsyncIterator[GenerationEvent], until: float, dep: Deployment
) -> GenerationEvent:
    """The stream's next event, before the monotonic time `until`."""
    try:
        async with asyncio.timeout(max(0.0, until - time.monotonic())):
            return await anext(stream)
    except TimeoutError:
        raise UpstreamError(
            f"Deployment '{dep.name}' gave no answer in time.", reason="timeout"
        ) from None

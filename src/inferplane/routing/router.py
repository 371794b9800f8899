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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

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

    async def aclose(self) -> None:
        """Stop the health checks; close the remote deployments' connection pools."""
        if self._checks is not None:
            self._checks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checks
        for _, dep in self.deployments():
            if dep.remote is not None:
                await dep.remote.aclose()

    def start_health_checks(self, interval_s: float) -> None:
        """Active health checks: every `interval_s`, each remote deployment whose breaker
        is open is asked for its model list; an answer lets the next request probe it at
        once instead of after the rest of the cooldown."""
        self._checks = asyncio.create_task(self._check_loop(interval_s))

    async def _check_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            for _, dep in self.deployments():
                remote = dep.remote
                if remote is not None and dep.breaker.state == OPEN and await remote.check():
                    dep.breaker.half_open_now()

    def plan(self, alias: Alias, req: RouteRequest) -> list[tuple[Alias, Deployment]]:
        out: list[tuple[Alias, Deployment]] = []
        seen: set[str] = set()

        def add(a: Alias) -> None:
            if a.id in seen:
                return
            seen.add(a.id)
            ordered = order(a.strategy, [d for d in a.deployments if allowed(d, req)])
            if a.by_complexity:
                long = a.complexity_tokens is not None and req.prompt_tokens > a.complexity_tokens
                ordered = by_complexity(ordered, long or req.complex)
            now = time.monotonic()
            # Healthy ones first; the others stay in the plan, tried if they recover.
            ready = [d for d in ordered if d.ready(now)]
            out.extend((a, d) for d in ready + [d for d in ordered if d not in ready])
            for name in a.fallbacks:
                fallback = self.aliases.get(name)
                if fallback is not None:
                    add(fallback)

        add(alias)
        return out


@dataclass
class Attempts:
    """The attempts of one request: how many, and which deployment served it."""

    count: int = 0
    served_by: tuple[Alias, Deployment] | None = None


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


async def attempts(
    alias: Alias,
    plan: list[tuple[Alias, Deployment]],
    run: Run,
    state: Attempts,
    *,
    on_attempt: Callable[[Alias, Deployment, str], None] = lambda a, d, outcome: None,
) -> AsyncIterator[GenerationEvent]:
    """Run the plan until one attempt delivers; yields that attempt's events."""
    deadline = time.monotonic() + alias.deadline_s
    last: InferplaneError | None = None
    failed_here: dict[str, int] = {}
    # Deployments that cannot serve this request at all (too long for them, refused).
    excluded: set[str] = set()
    while state.count < alias.max_attempts and plan:
        progressed = False
        for owner, dep in plan:
            now = time.monotonic()
            if state.count >= alias.max_attempts or now >= deadline:
                break
            if dep.name in excluded or dep.not_before > now or not dep.breaker.allow():
                continue
            progressed = True
            if failed_here.get(dep.name):
                # Coming back to a deployment that failed this request: back off first.
                pause = min(alias.backoff_max_s, alias.backoff_base_s * 2 ** failed_here[dep.name])
                await asyncio.sleep(min(random.uniform(0, pause), max(0.0, deadline - now)))
                if time.monotonic() >= deadline:
                    # The pause ran into the deadline: no attempt with no time left (its
                    # timeout would mark the deployment); the caller gets the last error.
                    dep.breaker.release()
                    break
            state.count += 1
            delivered = False
            verdict: bool | None = None
            started = time.perf_counter()
            ttft: float | None = None
            dep.in_flight += 1
            stream = run(owner, dep)
            # The first token must come by the attempt's timeout and the request's deadline.
            until = deadline
            if dep.timeout_s is not None:
                until = min(deadline, time.monotonic() + dep.timeout_s)
            try:
                held: Started | None = None
                while True:
                    try:
                        if delivered:
                            event = await anext(stream)
                        else:
                            event = await _first(stream, until, dep)
                    except StopAsyncIteration:
                        break
                    if not delivered:
                        if isinstance(event, Started):
                            held = event
                            continue
                        delivered = True
                        ttft = time.perf_counter() - started
                        state.served_by = (owner, dep)
                        if held is not None:
                            yield held
                    if isinstance(event, Finished):
                        verdict = True  # served, even if the caller stops reading here
                    yield event
                verdict = True
                return
            except InferplaneError as exc:
                if delivered or not _may_retry(exc):
                    verdict = False if _counts_against(exc) else None
                    on_attempt(owner, dep, "failure")
                    raise
                last = exc
                verdict = False if _counts_against(exc) else None
                failed_here[dep.name] = failed_here.get(dep.name, 0) + 1
                if _only_elsewhere(exc):
                    excluded.add(dep.name)
                if isinstance(exc, UpstreamError) and exc.retry_after:
                    dep.not_before = time.monotonic() + exc.retry_after
                on_attempt(owner, dep, "retry")
            finally:
                dep.in_flight -= 1
                await stream.aclose()  # type: ignore[attr-defined]
                if verdict is True:
                    on_attempt(owner, dep, "success")
                    dep.breaker.success()
                    dep.observe(True, ttft, time.perf_counter() - started)
                elif verdict is False:
                    dep.breaker.failure()
                    dep.observe(False)
                else:
                    dep.breaker.release()
        if not progressed:
            # Every candidate is unavailable. Wait for an upstream's Retry-After when it
            # ends soon and within the deadline; open breakers fail fast.
            now = time.monotonic()
            wait = min((d.not_before - now for _, d in plan if d.not_before > now), default=None)
            if wait is None or wait > _MAX_RETRY_AFTER_WAIT_S or now + wait >= deadline:
                break
            await asyncio.sleep(wait)
    if last is not None:
        raise last
    raise Unavailable(f"No deployment of '{alias.id}' can serve this request right now.")

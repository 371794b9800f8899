"""The in-memory limiter: exact sliding-window RPM/TPM and concurrency, per scope.

Algorithm (a sliding log, so "N per minute" means N in *any* 60 s window, not N per
clock minute): each scope keeps the admission times of its requests and, per request,
its token reservation. Admission purges entries older than the window, checks every
scope of the request (key, team, model), and commits to all of them or none.

A request is admitted in one step (`acquire(scopes, tokens)`: request, concurrency slot
and tokens) or in two, when its tokens are only known after heavy work (tokenizing a
prompt): `acquire(scopes, None)` counts the request and takes its slot, then
`Hold.reserve(tokens)` adds its tokens, checked against every TPM limit, all or none,
at that moment. A request refused at the second step keeps its place in the request
window (it was a request) and, once settled, nothing else. The first step already
refuses a request when a TPM window has no token left at all (every request needs one),
so a scope out of tokens costs no tokenizing.

Tokens are reserved for the worst case (prompt + max_tokens); `Hold.settle` replaces
that with the actual count when the request ends, so unused tokens go back to the
window. A log is kept only for a limit that is set (requests for an RPM, tokens for a
TPM). Single-threaded (the event loop), so check-and-commit is atomic without locks.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from inferplane.errors import RateLimited
from inferplane.limits.policy import Limits

WINDOW_S = 60.0


@dataclass
class _ScopeState:
    requests: deque[float] = field(default_factory=deque)
    # [admitted at, tokens, reservation id] per admitted request, in time order; `held`
    # finds a request's entry by its reservation id while it is inside the window. (The
    # order is a deque, not the dict's own: purging a dict from the front makes each
    # `next(iter(d))` skip every key deleted before it, so a burst's expiry 60 s later
    # cost seconds of CPU, measured: 1.2 s for 60k entries.)
    tokens: deque[list[float]] = field(default_factory=deque)
    held: dict[int, list[float]] = field(default_factory=dict)
    token_total: int = 0
    in_flight: int = 0

    def purge(self, now: float) -> None:
        horizon = now - WINDOW_S
        requests, tokens = self.requests, self.tokens
        while requests and requests[0] <= horizon:
            requests.popleft()
        while tokens and tokens[0][0] <= horizon:
            _, amount, rid = tokens.popleft()
            del self.held[int(rid)]
            self.token_total -= int(amount)

    def hold(self, now: float, rid: int, tokens: int) -> None:
        entry = [now, tokens, rid]
        self.tokens.append(entry)
        self.held[rid] = entry
        self.token_total += tokens

    def token_wait(self, now: float, needed: int, limit: int) -> float:
        """Seconds until `needed` (<= limit) more tokens fit under `limit`."""
        excess = self.token_total + needed - limit
        for at, amount, _ in self.tokens:
            excess -= int(amount)
            if excess <= 0:
                return at + WINDOW_S - now
        return 0.0


@dataclass(frozen=True)
class Scope:
    name: str  # "key:<id>", "team:<id>", "model:<id>"
    limits: Limits


class Limiter(Protocol):
    async def acquire(self, scopes: list[Scope], tokens: int | None) -> Hold:
        """Count a request and take its concurrency slot in every scope, all or none,
        with its `tokens` (None: none yet; they follow with `Hold.reserve`)."""


def _duration(seconds: float) -> str:
    """OpenAI's reset format: '1s', '6m0s', '250ms'."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}m{secs:.0f}s" if minutes else f"{secs:.3g}s"


class Hold(Protocol):
    """An admitted request's hold on its scopes (memory or Redis)."""

    headers: dict[str, str]

    async def reserve(self, tokens: int) -> None:
        """Add `tokens` to a hold taken without them, in every scope, all or none;
        `RateLimited` if a TPM limit refuses (then settle the hold: it keeps only its
        place in the request window). Updates `headers`."""

    def settle(self, actual_tokens: int) -> None:
        """Replace the token reservation by what was used; free the concurrency slot."""


class Reservation:
    """One admitted request's hold on its scopes; settle and release exactly once."""

    def __init__(
        self,
        limiter: MemoryLimiter,
        rid: int,
        scopes: list[tuple[Scope, _ScopeState]],
        headers: dict[str, str],
    ):
        self._limiter = limiter
        self._rid = rid
        self._scopes = scopes
        self.headers = headers
        self._done = False

    async def reserve(self, tokens: int) -> None:
        self.add(tokens)

    def add(self, tokens: int) -> None:
        """`reserve`, from synchronous code."""
        assert not self._done, "tokens reserved for a settled request"
        self._limiter._reserve(self._rid, self._scopes, tokens)
        self.headers = self._limiter._headers(self._scopes, self._limiter._clock())

    def settle(self, actual_tokens: int) -> None:
        """Replace the reservation by what was used, and free the concurrency slot."""
        if self._done:
            return
        self._done = True
        for _, state in self._scopes:
            entry = state.held.get(self._rid)
            if entry is not None:  # holds tokens, still inside the window
                state.token_total += actual_tokens - int(entry[1])
                entry[1] = actual_tokens
            state.in_flight -= 1


class MemoryLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._states: dict[str, _ScopeState] = {}
        self._ids = itertools.count(1)

    async def acquire(self, scopes: list[Scope], tokens: int | None) -> Hold:
        return self.admit(scopes, tokens)

    def admit(self, scopes: list[Scope], tokens: int | None) -> Reservation:
        now = self._clock()
        checked = []
        for scope in scopes:
            state = self._states.setdefault(scope.name, _ScopeState())
            state.purge(now)
            self._check_request(scope, state, now)
            # Without its tokens yet, a request still needs one to fit.
            self._check_tokens(scope, state, now, 1 if tokens is None else tokens)
            checked.append((scope, state))
        rid = next(self._ids)
        for scope, state in checked:
            if scope.limits.rpm is not None:
                state.requests.append(now)
            if tokens is not None and scope.limits.tpm is not None:
                state.hold(now, rid, tokens)
            state.in_flight += 1
        return Reservation(self, rid, checked, self._headers(checked, now))

    def _reserve(self, rid: int, scopes: list[tuple[Scope, _ScopeState]], tokens: int) -> None:
        now = self._clock()
        limited = [(s, st) for s, st in scopes if s.limits.tpm is not None]
        for scope, state in limited:
            state.purge(now)
            try:
                self._check_tokens(scope, state, now, tokens)
            except RateLimited as exc:
                # The request counted already: its request headers are the hold's.
                exc.ratelimit_headers = {
                    **self._request_headers(scopes, now),
                    **self._token_headers([(scope, state)], now),
                }
                raise
        for _, state in limited:
            state.hold(now, rid, tokens)

    def _check_request(self, scope: Scope, state: _ScopeState, now: float) -> None:
        lim = scope.limits
        if lim.max_parallel is not None and state.in_flight >= lim.max_parallel:
            raise RateLimited(
                f"Too many requests in flight for {scope.name}: limit {lim.max_parallel}.",
                retry_after=1,
                ratelimit_headers=self._headers([(scope, state)], now),
                code="concurrency_limit_exceeded",
            )
        if lim.rpm is not None and len(state.requests) >= lim.rpm:
            wait = state.requests[0] + WINDOW_S - now
            raise RateLimited(
                f"Rate limit reached for {scope.name}: {lim.rpm} requests per minute. "
                f"Try again in {_duration(wait)}.",
                retry_after=wait,
                ratelimit_headers=self._headers([(scope, state)], now),
            )

    def _check_tokens(self, scope: Scope, state: _ScopeState, now: float, tokens: int) -> None:
        lim = scope.limits
        if lim.tpm is None or state.token_total + tokens <= lim.tpm:
            return
        too_large = tokens > lim.tpm
        wait = WINDOW_S if too_large else state.token_wait(now, tokens, lim.tpm)
        if too_large:
            message = (
                f"Request too large for {scope.name}: {tokens} tokens (prompt + max_tokens) "
                f"exceed the limit of {lim.tpm} tokens per minute. Lower max_tokens."
            )
        else:
            message = (
                f"Rate limit reached for {scope.name}: {lim.tpm} tokens per minute, "
                f"{state.token_total} used, {tokens} requested. "
                f"Try again in {_duration(wait)}."
            )
        raise RateLimited(
            message,
            retry_after=wait,
            ratelimit_headers=self._headers([(scope, state)], now),
            code="request_too_large" if too_large else "tokens_limit_exceeded",
        )

    @classmethod
    def _headers(cls, checked: list[tuple[Scope, _ScopeState]], now: float) -> dict[str, str]:
        """OpenAI's x-ratelimit-* for the tightest scope of each kind."""
        return {**cls._request_headers(checked, now), **cls._token_headers(checked, now)}

    @staticmethod
    def _request_headers(checked: list[tuple[Scope, _ScopeState]], now: float) -> dict[str, str]:
        req = [
            (s.limits.rpm - len(st.requests), s.limits.rpm, st)
            for s, st in checked
            if s.limits.rpm is not None
        ]
        if not req:
            return {}
        remaining, limit, st = min(req, key=lambda r: r[0])
        reset = st.requests[-1] + WINDOW_S - now if st.requests else 0.0
        return {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(max(0, remaining)),
            "x-ratelimit-reset-requests": _duration(reset),
        }

    @staticmethod
    def _token_headers(checked: list[tuple[Scope, _ScopeState]], now: float) -> dict[str, str]:
        tok = [
            (s.limits.tpm - st.token_total, s.limits.tpm, st)
            for s, st in checked
            if s.limits.tpm is not None
        ]
        if not tok:
            return {}
        remaining, limit, st = min(tok, key=lambda r: r[0])
        reset = st.tokens[-1][0] + WINDOW_S - now if st.tokens else 0.0
        return {
            "x-ratelimit-limit-tokens": str(limit),
            "x-ratelimit-remaining-tokens": str(max(0, remaining)),
            "x-ratelimit-reset-tokens": _duration(reset),
        }

"""The admit stage: ledger capacity, rate limits and budgets, counted before heavy work.

A request is counted before the gateway does anything costly for it, so a caller cannot
make the gateway work without using its allowance. Where tokens are known up front (a
remote deployment's byte estimate) admission is one step, `Admitter.admit`; where a
local tokenizer must count them first, two:

  1. `Admitter.enter`, before the prompt is tokenized: the ledger must be able to record
     the request; rate limits count it (RPM) and give it a concurrency slot (one limiter
     call; a scope whose TPM window has no token left at all refuses here already);
  2. `Admitter.reserve`, once the tokenizer has counted it: budgets reserve the
     worst-case cost (prompt + max_tokens at the model's price, which needs the count),
     then rate limits add the exact prompt tokens + max_tokens to every TPM window (one
     more limiter call, none when no scope limits tokens).

A request refused after step 1 (a prompt too long, a TPM limit, a budget) stays counted
in its RPM windows (it was a request) but holds nothing else once settled. If a later
check refuses, what an earlier one reserved is released. `Admission.settle` replaces
every reservation with what the request really used (nothing, for one refused), exactly
once. A budget or limiter call interrupted by the client leaving is undone when it
completes (`_undone_if_cancelled`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from inferplane.errors import RateLimited, Unavailable
from inferplane.limits.budgets import Budgets, BudgetScope, BudgetTracker, Spend
from inferplane.limits.memory import Hold, Limiter, MemoryLimiter, Scope
from inferplane.limits.policy import Limits
from inferplane.limits.pricing import PriceBook, PriceVersion
from inferplane.pipeline.context import RequestContext
from inferplane.telemetry.ledger import UsageLedger
from inferplane.tenancy.records import Principal

T = TypeVar("T")


@dataclass
class Admission:
    limits: Hold
    budget: Spend | None
    price: PriceVersion | None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        return self.price.cost_nusd(prompt_tokens, completion_tokens) if self.price else 0

    def settle(self, tokens: int, cost_nusd: int) -> None:
        self.limits.settle(tokens)
        if self.budget is not None:
            self.budget.settle(cost_nusd)


def rate_scopes(principal: Principal, model: str, model_limits: Limits) -> list[Scope]:
    candidates = [Scope(f"key:{principal.key.id}", principal.key.limits)]
    if principal.team is not None:
        candidates.append(Scope(f"team:{principal.team.id}", principal.team.limits))
    candidates.append(Scope(f"model:{model}", model_limits))
    return [s for s in candidates if not s.limits.empty]


def token_cap(scopes: list[Scope]) -> int | None:
    """The most completion tokens one request may ask for: the smallest `max_tokens`
    limit of its key, team and model."""
    return min(
        (s.limits.max_tokens for s in scopes if s.limits.max_tokens is not None), default=None
    )


def budget_scopes(principal: Principal) -> list[BudgetScope]:
    out = []
    if principal.key.budget is not None:
        out.append(BudgetScope(f"key:{principal.key.id}", principal.key.budget))
    team = principal.team
    if team is not None and team.budget is not None:
        out.append(BudgetScope(f"team:{team.id}", team.budget))
    return out


class Admitter:
    def __init__(
        self,
        limiter: Limiter,
        budgets: Budgets,
        prices: PriceBook,
        ledger: UsageLedger,
    ):
        self._limiter = limiter
        self._budgets = budgets
        self._prices = prices
        self._ledger = ledger

    async def admit(
        self,
        ctx: RequestContext,
        model: str,
        scopes: list[Scope],
        prompt_tokens: int,
        max_completion_tokens: int,
    ) -> Admission:
        """Both steps at once, for a request whose tokens are known without work."""
        self._check_ledger()
        price = self._prices.get(model)
        budget = await self._budget(ctx, price, prompt_tokens, max_completion_tokens)
        try:
            hold = await self._acquire(scopes, prompt_tokens + max_completion_tokens)
        except BaseException:
            if budget is not None:
                budget.settle(0)
            raise
        ctx.outcome.ratelimit_headers = hold.headers
        return Admission(hold, budget, price)

    async def enter(self, ctx: RequestContext, model: str, scopes: list[Scope]) -> Admission:
        """Step 1: count the request and take its concurrency slot, before heavy work.
        Settle the admission if the request goes no further than this."""
        self._check_ledger()
        hold = await self._acquire(scopes, None)
        ctx.outcome.ratelimit_headers = hold.headers
        return Admission(hold, None, self._prices.get(model))

    async def reserve(
        self,
        ctx: RequestContext,
        admission: Admission,
        prompt_tokens: int,
        max_completion_tokens: int,
    ) -> None:
        """Step 2: the worst-case cost in the budgets, then the tokens in the TPM
        windows. On refusal the caller settles the admission (it holds its request)."""
        admission.budget = await self._budget(
            ctx, admission.price, prompt_tokens, max_completion_tokens
        )
        hold = admission.limits
        try:
            await hold.reserve(prompt_tokens + max_completion_tokens)
        except RateLimited:
            # The refusal carries the complete x-ratelimit-* set; no second copy.
            ctx.outcome.ratelimit_headers = {}
            raise
        ctx.outcome.ratelimit_headers = hold.headers

    def _check_ledger(self) -> None:
        if not self._ledger.accepting:
            raise Unavailable(
                "Usage cannot be recorded (the ledger's spool is full); try again later.",
                retry_after=30,
                code="ledger_unavailable",
            )

    async def _acquire(self, scopes: list[Scope], tokens: int | None) -> Hold:
        call = self._limiter.acquire(scopes, tokens)
        if not scopes or isinstance(self._limiter, MemoryLimiter):
            return await call  # answered without suspending: no cancellation can land
        return await _undone_if_cancelled(call, _settled)

    async def _budget(
        self, ctx: RequestContext, price: PriceVersion | None, prompt_tokens: int, max_tokens: int
    ) -> Spend | None:
        budgeted = budget_scopes(ctx.principal)
        if not budgeted:
            return None
        worst = price.cost_nusd(prompt_tokens, max_tokens) if price else 0
        call = self._budgets.acquire(budgeted, worst)
        if isinstance(self._budgets, BudgetTracker):
            return await call  # as for the memory limiter
        return await _undone_if_cancelled(call, _settled)


async def _undone_if_cancelled(call: Awaitable[T], undo: Callable[[T], None]) -> T:
    """`call`'s result; if the caller is cancelled meanwhile (its client left), the call
    still runs to its end and `undo` gives back what it took: a Redis script that ran
    but whose answer nobody read would hold a concurrency lease or a budget reservation
    until it expired (a budget's, never). A task and a shield cost about 9 us a call
    (measured on the 2-core test machine, under load), so the in-memory backends, which
    never suspend, are awaited directly."""
    task = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(lambda done: _undo(done, undo))
        raise


def _undo(done: asyncio.Future[T], undo: Callable[[T], None]) -> None:
    if not done.cancelled() and done.exception() is None:
        undo(done.result())


def _settled(hold: Hold | Spend) -> None:
    hold.settle(0)

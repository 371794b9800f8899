"""The admit stage: ledger capacity, budgets (worst-case cost) and rate limits, all or none.

Order: the ledger must be able to record the request; budgets reserve the worst-case
cost; rate limits reserve requests, tokens and a concurrency slot. If a later check
refuses, what an earlier one reserved is released. `Admission.settle` replaces every
reservation with what the request really used, exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

from inferplane.errors import Unavailable
from inferplane.limits.budgets import Budgets, BudgetScope, Spend
from inferplane.limits.memory import Hold, Limiter, Scope
from inferplane.limits.policy import Limits
from inferplane.limits.pricing import PriceBook, PriceVersion
from inferplane.pipeline.context import RequestContext
from inferplane.telemetry.ledger import UsageLedger
from inferplane.tenancy.records import Principal


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
        if not self._ledger.accepting:
            raise Unavailable(
                "Usage cannot be recorded (the ledger's spool is full); try again later.",
                retry_after=30,
                code="ledger_unavailable",
            )
        price = self._prices.get(model)
        worst = price.cost_nusd(prompt_tokens, max_completion_tokens) if price else 0
        budgeted = budget_scopes(ctx.principal)
        hold = await self._budgets.acquire(budgeted, worst) if budgeted else None
        try:
            reservation = await self._limiter.acquire(scopes, prompt_tokens + max_completion_tokens)
        except BaseException:
            if hold is not None:
                hold.settle(0)
            raise
        ctx.ratelimit_headers = reservation.headers
        return Admission(reservation, hold, price)

"""What the pipeline's tests run against: a scripted engine (a test double for a model,
local or remote: it implements `engines.interface.Engine`) and the real parts around it:
the usage ledger on SQLite, the in-memory limiter and budgets, the response cache on
its memory store, the router and the price book."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from inferplane.cache.responses import Directives, ResponseCache
from inferplane.cache.store import MemoryStore
from inferplane.config.routes import Routing
from inferplane.engines.interface import (
    Caller,
    Dispatched,
    GenerationInput,
    Prepared,
    Refusals,
)
from inferplane.errors import BudgetExceeded, InferplaneError
from inferplane.events import GenerationEvent
from inferplane.limits.budgets import BudgetScope, BudgetTracker
from inferplane.limits.memory import MemoryLimiter, Scope
from inferplane.limits.policy import Budget, Limits
from inferplane.limits.pricing import Price, PriceBook
from inferplane.pipeline.admission import Admitter
from inferplane.pipeline.context import RequestContext
from inferplane.pipeline.service import InferenceService
from inferplane.pipeline.stages import InputStage, OutputStage
from inferplane.routing.breaker import CircuitBreaker
from inferplane.routing.deployments import Alias, Deployment
from inferplane.routing.router import Router
from inferplane.routing.strategies import RouteRequest
from inferplane.store.database import open_database, sqlite_url
from inferplane.store.tables import usage_records
from inferplane.telemetry.ledger import UsageLedger
from inferplane.telemetry.metrics import Metrics
from inferplane.tenancy.records import KeyRecord, Principal, TeamRecord
from tests.unit.scripts import Script, Scripted

# The price of every test model, in USD per million tokens: 1000 nano-USD a prompt
# token, 2000 a completion token (`PriceVersion.cost_nusd`).
PRICE = Price(input_per_million=1.0, output_per_million=2.0)


def cost(prompt_tokens: int, completion_tokens: int) -> int:
    return prompt_tokens * 1000 + completion_tokens * 2000


# --- a scripted engine ----------------------------------------------------------------


def words(prompt: dict[str, Any]) -> int:
    """The scripted tokenizer: one token per word (never what the byte estimate says)."""
    texts = [str(m.get("content") or "") for m in prompt.get("messages", [])]
    return sum(len(t.split()) for t in [*texts, str(prompt.get("prompt") or "")])


@dataclass
class Generated:
    """One `generate` call as the engine was given it."""

    prepared: Prepared
    sampling: dict[str, Any]
    caller: Caller


class ScriptedEngine(Scripted, Refusals):
    """An engine whose `generate` calls follow a script, one outcome per call. With
    `counts`, `prepare` counts words (a tokenizer); without, it estimates as a remote
    adapter does. `refuse` makes `prepare` raise (a prompt too long for it)."""

    def __init__(
        self,
        name: str,
        *script: Script,
        counts: bool = False,
        dropped_turns: int = 0,
        refuse: InferplaneError | None = None,
    ):
        super().__init__(name, list(script))
        self._name = name
        self._counts = counts
        self._dropped = dropped_turns
        self._refuse = refuse
        self.prepares: list[GenerationInput] = []
        self.generates: list[Generated] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> str:
        return "scripted"

    @property
    def version(self) -> str:
        return f"{self.name}-v1"

    @property
    def counts(self) -> bool:
        return self._counts

    @property
    def timeout_s(self) -> float | None:
        return None

    async def prepare(self, request: GenerationInput) -> Prepared:
        self.prepares.append(request)
        if self._refuse is not None:
            raise self._refuse
        tokens = words(request.prompt) if self._counts else request.estimate_tokens()
        payload = request.capped()  # as a remote adapter asks its upstream
        return Prepared(tokens, payload.get("max_tokens") or 16, payload, self._dropped)

    def generate(
        self,
        prepared: Prepared,
        sampling: dict[str, Any],
        *,
        endpoint: str,
        stream: bool,
        caller: Caller,
        dispatched: Dispatched,
    ) -> AsyncIterator[GenerationEvent]:
        self.generates.append(Generated(prepared, sampling, caller))
        return self.play(prepared.prompt_tokens, dispatched)

    async def check(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass


def deployment(engine: ScriptedEngine, *tags: str, weight: float = 1.0) -> Deployment:
    """Deployed with a breaker that only a run of failures opens. Weight 0 puts it after
    the weighted ones (the `weighted` strategy), so a test knows the order."""
    routing = Routing(tags=list(tags), weight=weight)
    return Deployment(engine.name, routing, CircuitBreaker(5, 60.0), engine)


def alias(*deps: Deployment, **knobs: Any) -> Alias:
    return Alias("m", list(deps), **{"max_attempts": 3, "backoff_base_s": 0.001, **knobs})


# --- callers and requests -----------------------------------------------------------

KEY_LIMITS = Limits(rpm=10, tpm=10_000)
BUDGET = Budget(usd=1.0, period="total")


def principal(
    limits: Limits = KEY_LIMITS,
    *,
    data_class: str | None = None,
    team_class: str | None = None,
    budget: Budget | None = BUDGET,
    models: tuple[str, ...] | None = None,
) -> Principal:
    key = KeyRecord(
        id="k1",
        name="k1",
        role="user",
        team_id="t1",
        models=models,
        limits=limits,
        priority="interactive",
        expires_at=None,
        budget=budget,
        data_class=data_class,
    )
    team = TeamRecord("t1", "o1", "team one", Limits(), weight=2.0, data_class=team_class)
    return Principal(key, team)


def context(who: Principal | None = None, request_id: str = "req-1") -> RequestContext:
    return RequestContext(request_id, who or principal(), "chat.completions", user="alice")


def chat(text: str = "say hello to me", **extra: Any) -> GenerationInput:
    prompt = {"messages": [{"role": "user", "content": text}], **extra}
    return GenerationInput("chat.completions", prompt, len(text))


SAMPLING: dict[str, Any] = {"temperature": 0.0}  # deterministic: the cache may keep it
_ALL = Directives()  # Cache-Control: none


# --- the real parts around the engine -------------------------------------------------


@dataclass
class World:
    service: InferenceService
    admitter: Admitter
    ledger: UsageLedger
    limiter: MemoryLimiter
    budgets: BudgetTracker
    cache: ResponseCache
    metrics: Metrics
    db: sa.Engine
    router: Router = field(init=False)

    def __post_init__(self) -> None:
        self.router = self.service.router

    async def generate(
        self,
        ctx: RequestContext,
        target: Alias,
        request: GenerationInput | None = None,
        *,
        route: RouteRequest | None = None,
        directives: Directives = _ALL,
    ) -> list[GenerationEvent]:
        """A request read to its end."""
        events = await self.stream(ctx, target, request, route=route, directives=directives)
        async with aclosing(events):
            return [event async for event in events]

    async def stream(
        self,
        ctx: RequestContext,
        target: Alias,
        request: GenerationInput | None = None,
        *,
        route: RouteRequest | None = None,
        directives: Directives = _ALL,
    ) -> AsyncGenerator[GenerationEvent, None]:
        """A request's events, for the test to read as far as it likes (and close)."""
        request = request or chat(max_tokens=8)
        events = await self.service.generate(
            ctx, target, request, SAMPLING, route=route, directives=directives
        )
        return events

    async def records(self) -> list[dict[str, Any]]:
        """The ledger's records, as stored (flushed first)."""
        await self.ledger.flush()
        with self.db.connect() as conn:
            rows = conn.execute(sa.select(usage_records).order_by(usage_records.c.created_at))
            return [dict(row) for row in rows.mappings()]

    async def settled(self) -> None:
        """Wait for the answers the cache is storing in the background."""
        await self.cache.aclose()

    def spent(self) -> int:
        """What the key's budget has been charged, in nano-USD."""
        return self.budgets.spent("key:k1")

    def budget_free(self) -> bool:
        """Whether the key's budget holds no reservation: all it has left still fits."""
        try:
            hold = self.budgets.reserve(
                [BudgetScope("key:k1", BUDGET)], BUDGET.cap_nusd - self.spent()
            )
        except BudgetExceeded:
            return False
        hold.settle(0)
        return True

    def window(self, limits: Limits = KEY_LIMITS) -> dict[str, str]:
        """The key's rate-limit windows as a new request finds them (it takes nothing
        that stays: it is settled with no tokens)."""
        hold = self.limiter.admit([Scope("key:k1", limits)], None)
        hold.settle(0)
        return hold.headers


@asynccontextmanager
async def world(
    tmp_path: Path,
    *aliases: Alias,
    inputs: tuple[InputStage, ...] = (),
    outputs: tuple[OutputStage, ...] = (),
    hit_cost_fraction: float = 0.5,
) -> AsyncIterator[World]:
    (tmp_path / "db").mkdir(exist_ok=True)
    db = open_database(sqlite_url(tmp_path / "db"))
    prices = PriceBook(db)
    for each in aliases:
        prices.set(each.id, PRICE)
    metrics = Metrics()
    ledger = UsageLedger(db, tmp_path / "ledger", flush_interval_s=3600)
    limiter = MemoryLimiter()
    budgets = BudgetTracker(alert=lambda scope, spent: None)
    cache = ResponseCache(MemoryStore(1 << 20), metrics, hit_cost_fraction=hit_cost_fraction)
    admitter = Admitter(limiter, budgets, prices, ledger)
    service = InferenceService(
        {},
        Router({a.id: a for a in aliases}),
        admitter,
        ledger,
        metrics,
        cache,
        inputs=inputs,
        outputs=outputs,
    )
    await ledger.start()
    try:
        yield World(service, admitter, ledger, limiter, budgets, cache, metrics, db)
    finally:
        await cache.aclose()
        await ledger.close()
        db.dispose()

"""The meter stage: however a request ends (served, failed, abandoned), settle its
admission with what it used and write its ledger record, before the response ends;
count its tokens and time its first and later tokens.

Served (200) and abandoned-by-the-caller (499) requests cost what they used, once they
reached a model; failures of ours cost nothing. A cache hit costs the configured
fraction of what its answer cost, and uses none of the caller's per-minute tokens.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from inferplane.errors import InferplaneError
from inferplane.pipeline.admission import Admission
from inferplane.pipeline.context import RequestContext
from inferplane.telemetry.histogram import Series
from inferplane.telemetry.ledger import UsageLedger, UsageRecord, now_iso
from inferplane.telemetry.metrics import Metrics

_BILLED = frozenset({200, 499})


@dataclass
class Tally:
    """What a request used: its settlement and ledger record."""

    prompt: int = 0
    completion: int = 0
    status: int = 499  # the caller went away, unless we learn otherwise
    cache_hit: bool = False
    # Whether it left the queue for a model (or went upstream): one dropped before that
    # (its client left while it waited) never ran, and is charged nothing.
    reached: bool = False
    # A cache hit's charge: the configured fraction of its answer's cost.
    hit_fraction: float = 1.0

    def dispatched(self, prompt_tokens: int) -> None:
        """The engine's word that the request reached the model (`Engine.generate`)."""
        self.reached, self.prompt = True, prompt_tokens


@dataclass(frozen=True, slots=True)
class _Series:
    """One model's metric series (labelled once: `labels()` costs more than an update)."""

    prompt_tokens: Any
    completion_tokens: Any
    ttft: Series
    itl: Series


class Meter:
    def __init__(self, ledger: UsageLedger, metrics: Metrics):
        self._ledger = ledger
        self._metrics = metrics
        self._by_model: dict[str, _Series] = {}  # a configured model's, once it is used

    def _series(self, model: str) -> _Series:
        series = self._by_model.get(model)
        if series is None:
            m = self._metrics
            series = self._by_model[model] = _Series(
                m.prompt_tokens.labels(model),
                m.completion_tokens.labels(model),
                m.time_to_first_token.labels(model),
                m.inter_token_latency.labels(model),
            )
        return series

    @contextmanager
    def accounted(
        self, ctx: RequestContext, model: str, admission: Admission, tally: Tally
    ) -> Iterator[Tally]:
        """However the request ends, charge what it used and record it."""
        try:
            yield tally
        except InferplaneError as exc:
            tally.status = exc.status
            raise
        except Exception:
            tally.status = 500
            raise
        finally:
            self._finish(ctx, model, admission, tally)

    def charge(self, admission: Admission, tally: Tally) -> int:
        """What the request costs: what it used if served or abandoned after it reached a
        model (nothing before); a cache hit, the configured fraction of what its answer
        costs at today's price."""
        if tally.status not in _BILLED or not (tally.reached or tally.cache_hit):
            return 0
        cost = admission.cost(tally.prompt, tally.completion)
        return round(cost * tally.hit_fraction) if tally.cache_hit else cost

    def refused(self, ctx: RequestContext, model: str, status: int) -> None:
        """Record a request a guardrail refused before any model: nothing used, the
        decisions kept."""
        self._ledger.record(_record(ctx, model, None, Tally(status=status), 0))

    def tokens(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        series = self._series(model)
        series.prompt_tokens.inc(prompt_tokens)
        if completion_tokens:
            series.completion_tokens.inc(completion_tokens)

    def clock(self, ctx: RequestContext, model: str) -> TokenClock:
        series = self._series(model)
        return TokenClock(ctx, series.ttft, series.itl)

    def _finish(self, ctx: RequestContext, model: str, admission: Admission, tally: Tally) -> None:
        """Settle the admission and write the ledger record (before the response ends)."""
        prompt, completion = tally.prompt, tally.completion
        cost = self.charge(admission, tally)
        # A cache hit ran no model: it uses no tokens of the caller's per-minute limit.
        admission.settle(0 if tally.cache_hit else prompt + completion, cost)
        price = admission.price
        self._ledger.record(_record(ctx, model, price.id if price else None, tally, cost))


def _record(
    ctx: RequestContext, model: str, price_id: int | None, tally: Tally, cost: int
) -> UsageRecord:
    now, out, team = time.perf_counter(), ctx.outcome, ctx.principal.team
    return UsageRecord(
        id=ctx.ledger_id,
        request_id=ctx.request_id,
        created_at=now_iso(),
        org_id=team.org_id if team else None,
        team_id=team.id if team else None,
        key_id=ctx.principal.key.id,
        user=ctx.user,
        endpoint=ctx.endpoint,
        model=model,
        deployment=out.deployment or "none",
        model_version=out.model_version or "none",
        prompt_tokens=tally.prompt,
        completion_tokens=tally.completion,
        cost_nusd=cost,
        price_id=price_id,
        latency_ms=(now - ctx.started) * 1000,
        ttft_ms=(out.first_token_at - ctx.started) * 1000 if out.first_token_at else None,
        status=tally.status,
        cache_hit=tally.cache_hit,
        guardrails=_decisions(out.guardrails),
    )


def _decisions(decisions: list[dict[str, Any]]) -> str | None:
    return orjson.dumps(decisions).decode() if decisions else None


class TokenClock:
    """Time to first token and between tokens, measured once here for every engine
    (local, remote, whatever serves the request), labelled by the model the caller
    named; the first token's time also goes to the ledger (`ttft_ms`)."""

    __slots__ = ("_ctx", "_itl", "_last", "_ttft")

    def __init__(self, ctx: RequestContext, ttft: Series, itl: Series):
        self._ctx = ctx
        self._ttft, self._itl = ttft, itl  # the model's histograms
        self._last: float | None = None

    def tick(self) -> None:
        now = time.perf_counter()
        if self._last is None:
            self._ctx.outcome.first_token_at = now
            self._ttft.observe(now - self._ctx.started)
        else:
            self._itl.observe(now - self._last)
        self._last = now

"""The cache stages: look a request up before it is routed (a hit is replayed as the
events of a generation, and billed as one), store a served answer after it finished.
The cache itself (keys scoped by tenant and model version, exact and semantic) is
`cache/responses.py`; a broken entry or store is a miss, never a failed request."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from inferplane.cache.responses import Answer, Directives, Hit, Lookup, ResponseCache
from inferplane.events import Finished, GenerationEvent, Started, TextDelta
from inferplane.pipeline.admission import Admission
from inferplane.pipeline.context import RequestContext
from inferplane.pipeline.metering import Meter, Tally
from inferplane.routing.deployments import Alias

log = logging.getLogger(__name__)


class CacheStage:
    def __init__(self, cache: ResponseCache | None, meter: Meter):
        self.cache = cache
        self._meter = meter

    def lookup(
        self,
        ctx: RequestContext,
        alias: Alias,
        request: dict[str, Any],
        versions: frozenset[str],
        directives: Directives,
    ) -> Lookup | None:
        """The request's cache lookup (None: policy keeps it out of the cache)."""
        if self.cache is None:
            return None
        key = {"endpoint": ctx.endpoint, **request}
        return self.cache.lookup(
            ctx.principal, alias.id, alias.limits.cache, key, versions, directives
        )

    async def hit(self, ctx: RequestContext, lookup: Lookup) -> Hit | None:
        assert self.cache is not None
        try:
            hit = await self.cache.get(lookup)
        except Exception:  # a broken entry or store is a miss, never a failed request
            log.exception("response cache lookup failed")
            hit = None
        if hit is None:
            ctx.outcome.cache = "miss"
        return hit

    async def replay(
        self, ctx: RequestContext, model: str, admission: Admission, lookup: Lookup, hit: Hit
    ) -> AsyncGenerator[GenerationEvent, None]:
        """A cached answer, as the events of a generation (a stream replays as SSE)."""
        assert self.cache is not None
        answer, out = hit.answer, ctx.outcome
        out.cache, out.cache_age, out.cache_score = hit.kind, hit.age_s, hit.score
        out.served_by(answer.deployment, answer.version)
        tally = Tally(answer.prompt_tokens, answer.completion_tokens, 200, cache_hit=True)
        tally.hit_fraction = self.cache.hit_cost_fraction
        with self._meter.accounted(ctx, model, admission, tally):
            self.cache.count_hit(lookup, hit, self._meter.charge(admission, tally))
            yield Started(answer.prompt_tokens)
            out.first_token_at = time.perf_counter()
            for part in answer.parts:
                yield TextDelta(part, 0, more=True)  # all in hand: one write
            yield Finished(answer.finish_reason, answer.prompt_tokens, answer.completion_tokens)

    def recorder(self, lookup: Lookup | None) -> Recorder | None:
        """What stores the answer being generated, if it may be stored."""
        if lookup is None or self.cache is None:
            return None
        return Recorder(self.cache, lookup)


class Recorder:
    """Collects a generation's text; stores the answer once it finished."""

    def __init__(self, cache: ResponseCache, lookup: Lookup):
        self._cache = cache
        self._lookup = lookup
        self.parts: list[str] = []

    async def finished(self, ctx: RequestContext, admission: Admission, done: Finished) -> None:
        out = ctx.outcome
        if not self._lookup.store or not out.deployment or not out.model_version:
            return
        answer = Answer(
            tuple(self.parts),
            done.finish_reason,
            done.prompt_tokens,
            done.completion_tokens,
            out.deployment,
            out.model_version,
            time.time(),
            admission.cost(done.prompt_tokens, done.completion_tokens),
        )
        await self._cache.keep(self._lookup, answer)

"""The request path, as a list of stages run in order (one module each):

  admit (the request) -> input stages -> count and route (`planning`) -> admit (its
  tokens) (`admission`) -> cache lookup (`caching`) -> complexity -> invoke (routing's
  attempt loop over the deployments' engines) with the output stages -> cache store ->
  meter (`metering`).

Admission counts the request before the gateway works for it: with a local tokenizer,
the request (RPM, concurrency) before the prompt is templated and tokenized, its tokens
(TPM, budgets) once they are counted (see `pipeline/admission.py`). A request whose
client leaves while it waits for a model is recorded with status 499 and charged
nothing; once it reached a model, it is charged what it used. What the stages learn
goes to the request's `Outcome` (`pipeline/context.py`).

(Authentication runs before, in the HTTP layer's dependency.) The HTTP layer only ever
calls `InferenceService`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from inferplane.cache.responses import Directives, ResponseCache
from inferplane.config.policy import PolicySettings
from inferplane.engines.interface import Caller, GenerationInput
from inferplane.engines.local.model import LocalEmbedder, LocalModel
from inferplane.events import (
    Embeddings,
    Finished,
    GenerationEvent,
    Started,
    TextDelta,
    ToolCallDelta,
)
from inferplane.pipeline.admission import Admission, Admitter, rate_scopes, token_cap
from inferplane.pipeline.caching import CacheStage, Recorder
from inferplane.pipeline.catalogue import Catalogue
from inferplane.pipeline.context import RequestContext
from inferplane.pipeline.guarding import ContentPolicyViolation
from inferplane.pipeline.metering import Meter, Tally
from inferplane.pipeline.planning import Plan, Planner
from inferplane.pipeline.stages import InputStage, OutputStage, run_inputs, run_outputs
from inferplane.routing.deployments import Alias, Deployment
from inferplane.routing.policy import DataPolicy
from inferplane.routing.router import Router, Run, attempts
from inferplane.routing.strategies import RouteRequest
from inferplane.telemetry.ledger import UsageLedger
from inferplane.telemetry.metrics import Metrics

_DEFAULT_DIRECTIVES = Directives()


class InferenceService:
    def __init__(
        self,
        models: dict[str, LocalModel],
        router: Router,
        admitter: Admitter,
        ledger: UsageLedger,
        metrics: Metrics,
        cache: ResponseCache | None = None,
        policy: DataPolicy | None = None,
        *,
        inputs: tuple[InputStage, ...] = (),
        outputs: tuple[OutputStage, ...] = (),
    ):
        self.catalogue = Catalogue(models, router)
        self._admitter = admitter
        self._metrics = metrics
        self._meter = Meter(ledger, metrics)
        self._cache = CacheStage(cache, self._meter)
        self._planner = Planner(router, policy or DataPolicy(PolicySettings()), metrics)
        self._inputs, self._outputs = inputs, outputs

    @property
    def models(self) -> dict[str, LocalModel]:
        return self.catalogue.models

    @property
    def router(self) -> Router:
        return self.catalogue.router

    @property
    def cache(self) -> ResponseCache | None:
        return self._cache.cache

    # -- generation ---------------------------------------------------------------------

    async def generate(
        self,
        ctx: RequestContext,
        alias: Alias,
        request: GenerationInput,
        sampling: dict[str, Any],
        *,
        stream: bool = False,
        route: RouteRequest | None = None,
        directives: Directives = _DEFAULT_DIRECTIVES,
    ) -> AsyncGenerator[GenerationEvent, None]:
        """Run the stages up to the answer; its events, the first always `Started` (or
        an error is raised). Whoever reads them closes them (`aclose`) when done: the
        request is settled and recorded then, before its response ends."""
        ctx.outcome.model, ctx.outcome.attempts = alias.id, 0
        scopes = rate_scopes(ctx.principal, alias.id, alias.limits)
        request = GenerationInput(
            request.endpoint, request.prompt, request.size_hint, token_cap(scopes)
        )
        request.capped()  # over the key's cap: refused before it is counted
        # Counted as a request before a tokenizer or a stage works on it; its tokens
        # once counted. A byte estimate needs no work: one step (pipeline/admission.py).
        two_steps = alias.counter is not None or any(s.active for s in self._inputs)
        admission = await self._admitter.enter(ctx, alias.id, scopes) if two_steps else None
        try:
            request = await run_inputs(self._inputs, ctx, request)
            if ctx.outcome.held_reply is not None:  # held for review: answered meanwhile
                assert admission is not None  # input stages run after the first step
                admission.settle(0, 0)
                self._meter.refused(ctx, alias.id, 200)
                return _held(ctx.outcome.held_reply)
            plan = await self._planner.plan(ctx, alias, request, route, sampling)
            n_prompt, n_out = plan.prompt_tokens, plan.max_tokens
            if admission is None:
                admission = await self._admitter.admit(ctx, alias.id, scopes, n_prompt, n_out)
            else:
                await self._admitter.reserve(ctx, admission, n_prompt, n_out)
            answer = await self._answer(ctx, alias, plan, admission, sampling, stream, directives)
        except BaseException as exc:
            if admission is not None:
                admission.settle(0, 0)  # it stays counted as a request, holding nothing
            if isinstance(exc, ContentPolicyViolation):  # a guardrail's decision: kept
                self._meter.refused(ctx, alias.id, exc.status)
            raise
        if not self._outputs:
            return answer
        return _closing_both(run_outputs(self._outputs, ctx, answer), answer)

    async def _answer(
        self,
        ctx: RequestContext,
        alias: Alias,
        plan: Plan,
        admission: Admission,
        sampling: dict[str, Any],
        stream: bool,
        directives: Directives,
    ) -> AsyncGenerator[GenerationEvent, None]:
        """The cache's answer if it holds one, else the model's (the answer not started:
        whoever reads it starts it)."""
        key = {**plan.request.capped(), **sampling}
        lookup = self._cache.lookup(ctx, alias, key, plan.versions, directives)
        hit = await self._cache.hit(ctx, lookup) if lookup is not None else None
        if lookup is not None and hit is not None:
            return self._cache.replay(ctx, alias.id, admission, lookup, hit)
        await self._planner.by_complexity(alias, plan)
        recorder = self._cache.recorder(lookup)
        return self._invoke(ctx, alias, plan, admission, sampling, stream, recorder)

    async def _invoke(
        self,
        ctx: RequestContext,
        alias: Alias,
        plan: Plan,
        admission: Admission,
        sampling: dict[str, Any],
        stream: bool,
        recorder: Recorder | None,
    ) -> AsyncGenerator[GenerationEvent, None]:
        """Routing's attempts over the plan, metered: tokens timed and counted, the
        answer kept for the cache, the request charged and recorded however it ends.
        Routing writes the attempts and what served to the request's `Outcome`."""
        tally = Tally()
        clock = self._meter.clock(ctx, alias.id)
        caller: Caller | None = None

        def run(owner: Alias, dep: Deployment) -> AsyncIterator[GenerationEvent]:
            nonlocal caller
            engine = dep.engine
            prepared = plan.prepared.get(id(engine))
            if prepared is None:  # another local model than the one that counted
                return _prepared_then(run, plan, owner, dep)
            caller = caller or _caller(ctx)
            return engine.generate(
                prepared,
                sampling,
                endpoint=ctx.endpoint,
                stream=stream,
                caller=caller,
                dispatched=tally.dispatched,
            )

        routed = attempts(alias, plan.deployments, run, ctx.outcome, on_attempt=self._on_attempt)
        # Closed as soon as the caller stops reading: the attempt's bookkeeping (breaker,
        # in-flight count) settles then.
        with self._meter.accounted(ctx, alias.id, admission, tally):
            async with aclosing(routed):
                async for event in routed:
                    if isinstance(event, TextDelta):
                        clock.tick()
                        tally.completion = event.tokens_so_far
                        if recorder is not None:
                            recorder.parts.append(event.text)
                    elif isinstance(event, ToolCallDelta):
                        clock.tick()
                        tally.completion = event.tokens_so_far
                    elif isinstance(event, Finished):
                        self._finished(ctx, alias.id, admission, tally, event)
                        if recorder is not None:  # kept before the answer ends
                            await recorder.finished(ctx, admission, event)
                    yield event

    def _finished(
        self,
        ctx: RequestContext,
        model: str,
        admission: Admission,
        tally: Tally,
        done: Finished,
    ) -> None:
        tally.prompt, tally.completion = done.prompt_tokens, done.completion_tokens
        tally.status = 200
        self._meter.tokens(model, done.prompt_tokens, done.completion_tokens)

    def _on_attempt(self, alias: Alias, dep: Deployment, outcome: str) -> None:
        self._metrics.route_attempts.labels(alias.id, dep.name, outcome).inc()

    # -- embeddings ---------------------------------------------------------------------

    async def embed(
        self, ctx: RequestContext, model: LocalEmbedder, inputs: list[str]
    ) -> Embeddings:
        out = ctx.outcome
        out.model = model.id
        out.served_by(model.deployment, model.version)
        scopes = rate_scopes(ctx.principal, model.id, model.spec.limits)
        # Counted as a request before the tokenizer works (pipeline/admission.py).
        admission = await self._admitter.enter(ctx, model.id, scopes)
        try:
            tokens = await model.count(inputs)
            await self._admitter.reserve(ctx, admission, sum(tokens), 0)
        except BaseException:
            admission.settle(0, 0)
            raise
        with self._meter.accounted(ctx, model.id, admission, Tally()) as tally:
            result = await model.embed(inputs, tokens, _caller(ctx), tally.dispatched)
            self._meter.tokens(model.id, sum(tokens), 0)
            tally.status = 200
            return result


async def _closing_both(
    events: AsyncGenerator[GenerationEvent, None], answer: AsyncGenerator[GenerationEvent, None]
) -> AsyncGenerator[GenerationEvent, None]:
    """The output stages' events; closed, it closes the answer under them at once too
    (a stage need not close what it reads)."""
    try:
        async for event in events:
            yield event
    finally:
        await events.aclose()
        await answer.aclose()


async def _prepared_then(
    run: Run, plan: Plan, owner: Alias, dep: Deployment
) -> AsyncIterator[GenerationEvent]:
    """An attempt on an engine the request was not prepared for yet: prepare, then run."""
    await plan.prepared_for(dep.engine)
    events = run(owner, dep)
    try:
        async for event in events:
            yield event
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def _caller(ctx: RequestContext) -> Caller:
    """The request's caller as an engine needs it: its queue share, priority class,
    deadline and prefix-cache scope."""
    principal = ctx.principal
    team = principal.team
    return Caller(
        share=f"team:{team.id}" if team else f"key:{principal.key.id}",
        weight=team.weight if team else 1.0,
        batch=principal.key.priority == "batch",
        deadline=ctx.deadline,
        scope=principal.org_scope,
    )


async def _held(message: str) -> AsyncGenerator[GenerationEvent, None]:
    """The answer to a request held for a person's review (`hold: reply`): the rule's
    message, from no model."""
    yield Started(0)
    yield TextDelta(message)
    yield Finished("stop", 0, 0)

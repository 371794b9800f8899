"""The request path: resolve model -> admit -> prepare -> invoke -> settle and record.

Admission counts the request before the gateway works for it: with a local tokenizer,
the request (RPM, concurrency) before the prompt is templated and tokenized, its tokens
(TPM, budgets) once they are counted (see `pipeline/admission.py`). A request whose
client leaves while it waits for a model is recorded with status 499 and charged
nothing; once it reached a model, it is charged what it used.

(Authentication runs before, in the HTTP layer's dependency.) Later stages (budgets,
guardrails, grounding, caching, routing) slot in here; the HTTP layer only ever calls
`InferenceService`.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from inferplane.cache.responses import Answer, Directives, Hit, Lookup, ResponseCache
from inferplane.config.policy import PolicySettings
from inferplane.engines.local.model import LocalModel
from inferplane.engines.local.prompts import PreparedPrompt
from inferplane.engines.worker.protocol import Message
from inferplane.errors import (
    ContextLengthExceeded,
    InferplaneError,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    NoDeployment,
)
from inferplane.events import Embeddings, Finished, GenerationEvent, Started, TextDelta
from inferplane.pipeline.admission import Admission, Admitter, rate_scopes
from inferplane.pipeline.context import RequestContext
from inferplane.routing.deployments import Alias, Deployment
from inferplane.routing.policy import DataPolicy
from inferplane.routing.router import Attempts, Router, attempts
from inferplane.routing.strategies import RouteRequest
from inferplane.telemetry.ledger import UsageLedger, UsageRecord, now_iso
from inferplane.telemetry.metrics import Metrics
from inferplane.tenancy.records import Principal

log = logging.getLogger(__name__)
_DEFAULT_DIRECTIVES = Directives()

# Served (200) and abandoned-by-the-caller (499) requests cost what they used (once they
# reached a model); failures of ours cost nothing.
_BILLED = frozenset({200, 499})
# Prompts longer than this are tokenized on a thread, off the event loop.
_INLINE_TOKENIZE_BYTES = 16_384


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
    ):
        self.models = models
        self.router = router
        self._admitter = admitter
        self._ledger = ledger
        self._metrics = metrics
        self.cache = cache
        self.policy = policy or DataPolicy(PolicySettings())

    def visible_models(self, principal: Principal) -> list[LocalModel | Alias]:
        listed: list[LocalModel | Alias] = [m for m in self.models.values() if m.spec.listed]
        listed += [a for a in self.router.aliases.values() if a.id not in self.models]
        return [m for m in listed if principal.may_use(m.id)]

    def resolve(self, principal: Principal, model: str, kind: str | None = None) -> LocalModel:
        """A local model named directly (embeddings; generation goes through `route`)."""
        local = self.models.get(model)
        if local is None or not local.spec.listed:
            raise ModelNotFound(model)
        if not principal.may_use(model):
            raise ModelNotAllowed(model)
        if kind is not None and local.kind != kind:
            raise _unsupported(model, kind)
        return local

    def route(self, principal: Principal, model: str) -> Alias:
        """The alias a generation request names (a local LLM is a one-deployment alias)."""
        alias = self.router.get(model)
        if alias is None:
            local = self.models.get(model)
            if local is not None and local.spec.listed:
                raise _unsupported(model, "llm")
            raise ModelNotFound(model)
        if not principal.may_use(model):
            raise ModelNotAllowed(model)
        return alias

    # -- generation ---------------------------------------------------------------------

    async def generate(
        self,
        ctx: RequestContext,
        alias: Alias,
        prompt_input: dict[str, Any],
        size_hint: int,
        sampling: dict[str, Any],
        *,
        stream: bool = False,
        route: RouteRequest | None = None,
        directives: Directives = _DEFAULT_DIRECTIVES,
    ) -> AsyncIterator[GenerationEvent]:
        """Run one generation; the first event is always `Started` (or an error is raised)."""
        scopes = rate_scopes(ctx.principal, alias.id, alias.limits)
        caps = [s.limits.max_tokens for s in scopes if s.limits.max_tokens is not None]
        cap = min(caps, default=None)
        prepared: dict[str, PreparedPrompt] = {}
        remote_input = _capped(prompt_input, cap)  # what a remote deployment is asked
        # The request is counted before a local tokenizer works on it; its tokens once
        # counted (pipeline/admission.py). A byte estimate needs no work: one step.
        admission: Admission | None = None
        if alias.local_llm is not None:
            admission = await self._admitter.enter(ctx, alias.id, scopes)
        try:
            route, plan, max_tokens = await self._plan(
                ctx, alias, route, prepared, size_hint, cap, prompt_input, remote_input
            )
            n_prompt = route.prompt_tokens
            if admission is None:
                admission = await self._admitter.admit(ctx, alias.id, scopes, n_prompt, max_tokens)
            else:
                await self._admitter.reserve(ctx, admission, n_prompt, max_tokens)
        except BaseException:
            if admission is not None:
                admission.settle(0, 0)  # it stays counted as a request, holding nothing
            raise
        lookup = None
        if self.cache is not None:
            lookup = self.cache.plan(
                ctx.principal,
                alias.id,
                alias.limits.cache,
                {"endpoint": ctx.endpoint, **remote_input, **sampling},
                frozenset(dep.version for _, dep in plan),
                directives,
            )
        if lookup is not None:
            hit = await self._cached(lookup)
            if hit is not None:
                async for event in self._replay(ctx, alias.id, admission, lookup, hit):
                    yield event
                return
            ctx.cache = "miss"

        long = alias.complexity_tokens is not None and n_prompt > alias.complexity_tokens
        if alias.classifier is not None and not long and await self._complex(alias, prompt_input):
            plan = self.router.plan(alias, dataclasses.replace(route, complex=True))

        tally = _Tally()

        def run(owner: Alias, dep: Deployment) -> AsyncIterator[GenerationEvent]:
            if dep.local is not None:
                return self._run_local(
                    ctx, dep.local, prepared, size_hint, cap, prompt_input, sampling, tally
                )
            assert dep.remote is not None
            tally.reached, tally.prompt = True, n_prompt  # on its way upstream
            return dep.remote.generate(
                ctx.endpoint,
                remote_input,
                sampling,
                stream=stream,
                prompt_estimate=n_prompt,
            )

        state = Attempts()
        parts: list[str] = []
        clock = _TokenClock(ctx, self._metrics, alias.id)
        with self._accounted(ctx, alias.id, admission, tally):
            try:
                async for event in attempts(alias, plan, run, state, on_attempt=self._on_attempt):
                    ctx.attempts = state.count
                    if state.served_by is not None and ctx.deployment is None:
                        served = state.served_by[1]
                        ctx.deployment, ctx.model_version = served.name, served.version
                    if isinstance(event, TextDelta):
                        clock.tick()
                        tally.completion = event.tokens_so_far
                        if lookup is not None:
                            parts.append(event.text)
                    elif isinstance(event, Finished):
                        tally.prompt = event.prompt_tokens
                        tally.completion, tally.status = event.completion_tokens, 200
                        self._meter(alias.id, event.prompt_tokens, event.completion_tokens)
                        if lookup is not None and lookup.store and ctx.deployment is not None:
                            self._keep(ctx, lookup, admission, parts, event)
                    yield event
            finally:
                ctx.attempts = state.count

    async def _plan(
        self,
        ctx: RequestContext,
        alias: Alias,
        route: RouteRequest | None,
        prepared: dict[str, PreparedPrompt],
        size_hint: int,
        cap: int | None,
        prompt_input: dict[str, Any],
        remote_input: dict[str, Any],
    ) -> tuple[RouteRequest, list[tuple[Alias, Deployment]], int]:
        """The prompt counted (by the first local deployment's tokenizer, else a byte
        estimate), the deployments that may serve it, and the max_tokens to reserve."""
        asked = remote_input.get("max_tokens") or alias.default_max_tokens
        local = alias.local_llm
        if local is not None:
            # The first local deployment's tokenizer counts the prompt for admission.
            try:
                prompt = await self._prepare(local, size_hint, cap=cap, **prompt_input)
            except ContextLengthExceeded as exc:
                if len(alias.deployments) == 1 and not alias.fallbacks:
                    raise
                # Another deployment may serve it: reserve what it is asked (the caller's
                # max_tokens) and the prompt as counted, or estimated where the refusal
                # came before tokenizing (max_tokens over this model's whole context).
                n_prompt = exc.prompt_tokens or _estimate_tokens(prompt_input)
                max_tokens = asked
            else:
                prepared[local.id] = prompt
                n_prompt, max_tokens = len(prompt.tokens), prompt.max_tokens
                ctx.dropped_turns = prompt.dropped_turns
        else:
            n_prompt, max_tokens = _estimate_tokens(prompt_input), asked
        team = ctx.principal.team
        data_class = self.policy.strictest(
            route.data_class if route else None,
            ctx.principal.key.data_class,
            team.data_class if team else None,
        )
        route = RouteRequest(
            data_class=data_class,
            needs=self.policy.needs(data_class),
            region=route.region if route else None,
            prompt_tokens=n_prompt,
        )
        plan = self.router.plan(alias, route)
        if not plan:
            raise NoDeployment(alias.id)
        return route, plan, max_tokens

    async def _complex(self, alias: Alias, prompt_input: dict[str, Any]) -> bool:
        """The alias's classifier's verdict (after admission and the cache: a rejected
        or cached request costs no embedding). A classifier that fails decides nothing."""
        assert alias.classifier is not None
        try:
            large = await alias.classifier.judge(prompt_input)
        except Exception:
            log.warning("complexity classifier of '%s' failed", alias.id, exc_info=True)
            self._metrics.route_complexity.labels(alias.id, "failed").inc()
            return False
        self._metrics.route_complexity.labels(alias.id, "large" if large else "small").inc()
        return large

    async def _cached(self, lookup: Lookup) -> Hit | None:
        assert self.cache is not None
        try:
            return await self.cache.get(lookup)
        except Exception:  # a broken entry or store is a miss, never a failed request
            log.exception("response cache lookup failed")
            return None

    def _keep(
        self,
        ctx: RequestContext,
        lookup: Lookup,
        admission: Admission,
        parts: list[str],
        done: Finished,
    ) -> None:
        assert self.cache is not None and ctx.deployment and ctx.model_version
        answer = Answer(
            tuple(parts),
            done.finish_reason,
            done.prompt_tokens,
            done.completion_tokens,
            ctx.deployment,
            ctx.model_version,
            time.time(),
            admission.cost(done.prompt_tokens, done.completion_tokens),
        )
        self.cache.keep(lookup, answer)

    async def _replay(
        self, ctx: RequestContext, model: str, admission: Admission, lookup: Lookup, hit: Hit
    ) -> AsyncIterator[GenerationEvent]:
        """A cached answer, as the events of a generation (a stream replays as SSE)."""
        assert self.cache is not None
        answer = hit.answer
        ctx.cache, ctx.cache_age, ctx.cache_score = hit.kind, hit.age_s, hit.score
        ctx.deployment, ctx.model_version = answer.deployment, answer.version
        tally = _Tally(answer.prompt_tokens, answer.completion_tokens, 200, cache_hit=True)
        with self._accounted(ctx, model, admission, tally):
            charged = self._charge(admission, tally)
            self.cache.count_hit(lookup, hit, charged)
            yield Started(answer.prompt_tokens)
            ctx.first_token_at = time.perf_counter()
            for part in answer.parts:
                yield TextDelta(part, 0, more=True)  # all in hand: one write
            yield Finished(answer.finish_reason, answer.prompt_tokens, answer.completion_tokens)

    def _on_attempt(self, alias: Alias, dep: Deployment, outcome: str) -> None:
        self._metrics.route_attempts.labels(alias.id, dep.name, outcome).inc()

    async def _run_local(
        self,
        ctx: RequestContext,
        model: LocalModel,
        prepared: dict[str, PreparedPrompt],
        size_hint: int,
        cap: int | None,
        prompt_input: dict[str, Any],
        sampling: dict[str, Any],
        tally: _Tally,
    ) -> AsyncIterator[GenerationEvent]:
        prompt = prepared.get(model.id)
        if prompt is None:
            prompt = await self._prepare(model, size_hint, cap=cap, **prompt_input)
            prepared[model.id] = prompt
        async for event in self._invoke(ctx, model, prompt, sampling, tally):
            yield event

    async def _prepare(self, model: LocalModel, size_hint: int, **kwargs: Any) -> PreparedPrompt:
        """Template + tokenize + context check, with the model's own tokenizer."""
        assert model.prompts is not None
        # Truncation tokenizes the chat again per step of its search: a thread sooner.
        inline = _INLINE_TOKENIZE_BYTES // (8 if model.spec.context_policy == "truncate" else 1)
        if size_hint <= inline:
            return model.prompts.prepare(**kwargs)
        return await asyncio.to_thread(model.prompts.prepare, **kwargs)

    async def _invoke(
        self,
        ctx: RequestContext,
        model: LocalModel,
        prompt: PreparedPrompt,
        sampling: dict[str, Any],
        tally: _Tally,
    ) -> AsyncIterator[GenerationEvent]:
        payload = {
            "op": "generate",
            **prompt.worker_payload(),
            **sampling,
            "scope": ctx.principal.org_scope,
        }
        cost = len(prompt.tokens) + prompt.max_tokens
        async with _slot(ctx, model, cost):
            tally.reached, tally.prompt = True, len(prompt.tokens)
            async for event in self._stream(model, payload):
                yield event

    async def _stream(
        self, model: LocalModel, payload: dict[str, Any]
    ) -> AsyncIterator[GenerationEvent]:
        client = await model.worker.client()
        async for msg in client.stream(payload):
            event = msg["event"]
            if event == "token":
                yield TextDelta(msg["text"], int(msg.get("n", 0)))
            elif event == "start":
                yield Started(int(msg["prompt_tokens"]))
            elif event == "done":
                done = Finished(
                    msg["finish_reason"], int(msg["prompt_tokens"]), int(msg["completion_tokens"])
                )
                yield done
            elif event == "error":
                raise _worker_error(msg)

    # -- embeddings ---------------------------------------------------------------------

    async def embed(self, ctx: RequestContext, model: LocalModel, inputs: list[str]) -> Embeddings:
        counter = model.embedding_tokens
        assert counter is not None
        scopes = rate_scopes(ctx.principal, model.id, model.spec.limits)
        # Counted as a request before the tokenizer works (pipeline/admission.py).
        admission = await self._admitter.enter(ctx, model.id, scopes)
        try:
            if sum(map(len, inputs)) <= _INLINE_TOKENIZE_BYTES:
                tokens = counter.count(inputs)
            else:
                tokens = await asyncio.to_thread(counter.count, inputs)
            await self._admitter.reserve(ctx, admission, sum(tokens), 0)
        except BaseException:
            admission.settle(0, 0)
            raise
        ctx.deployment, ctx.model_version, ctx.attempts = model.deployment, model.version, 1
        with self._accounted(ctx, model.id, admission, _Tally()) as tally:
            async with _slot(ctx, model, sum(tokens)):
                tally.reached, tally.prompt = True, sum(tokens)
                client = await model.worker.client()
                async for msg in client.stream({"op": "embed", "input": inputs}):
                    if msg["event"] == "error":
                        raise _worker_error(msg)
                    if msg["event"] == "embeddings":
                        self._meter(model.id, sum(tokens), 0)
                        tally.status = 200
                        data = base64.b64decode(msg["data"])
                        return Embeddings(data, int(msg["dim"]), tokens)
            raise InferplaneError("The worker ended the request without a result.")

    @contextmanager
    def _accounted(
        self, ctx: RequestContext, model: str, admission: Admission, tally: _Tally
    ) -> Iterator[_Tally]:
        """However the request ends (served, failed, abandoned), charge what it used."""
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

    def _charge(self, admission: Admission, tally: _Tally) -> int:
        """What the request costs: what it used if served or abandoned after it reached a
        model (nothing before); a cache hit, the configured fraction of what its answer
        costs at today's price."""
        if tally.status not in _BILLED or not (tally.reached or tally.cache_hit):
            return 0
        cost = admission.cost(tally.prompt, tally.completion)
        if tally.cache_hit:
            assert self.cache is not None
            return round(cost * self.cache.hit_cost_fraction)
        return cost

    def _finish(self, ctx: RequestContext, model: str, admission: Admission, tally: _Tally) -> None:
        """Settle the admission and write the ledger record (before the response ends)."""
        prompt, completion, status = tally.prompt, tally.completion, tally.status
        cost = self._charge(admission, tally)
        # A cache hit ran no model: it uses no tokens of the caller's per-minute limit.
        admission.settle(0 if tally.cache_hit else prompt + completion, cost)
        price = admission.price
        now = time.perf_counter()
        team = ctx.principal.team
        self._ledger.record(
            UsageRecord(
                id=ctx.ledger_id,
                request_id=ctx.request_id,
                created_at=now_iso(),
                org_id=team.org_id if team else None,
                team_id=team.id if team else None,
                key_id=ctx.principal.key.id,
                user=ctx.user,
                endpoint=ctx.endpoint,
                model=model,
                deployment=ctx.deployment or "none",
                model_version=ctx.model_version or "none",
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost_nusd=cost,
                price_id=price.id if price else None,
                latency_ms=(now - ctx.started) * 1000,
                ttft_ms=(ctx.first_token_at - ctx.started) * 1000 if ctx.first_token_at else None,
                status=status,
                cache_hit=tally.cache_hit,
            )
        )

    def _meter(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        self._metrics.prompt_tokens.labels(model).inc(prompt_tokens)
        if completion_tokens:
            self._metrics.completion_tokens.labels(model).inc(completion_tokens)


class _TokenClock:
    """Time to first token and between tokens, measured once here for every engine
    (local, remote, whatever serves the request), labelled by the model the caller
    named; the first token's time also goes to the ledger (`ttft_ms`)."""

    def __init__(self, ctx: RequestContext, metrics: Metrics, model: str):
        self._ctx = ctx
        self._ttft = metrics.time_to_first_token.labels(model)
        self._itl = metrics.inter_token_latency.labels(model)
        self._last: float | None = None

    def tick(self) -> None:
        now = time.perf_counter()
        if self._last is None:
            self._ctx.first_token_at = now
            self._ttft.observe(now - self._ctx.started)
        else:
            self._itl.observe(now - self._last)
        self._last = now


@dataclass
class _Tally:
    """What a request used: its settlement and ledger record."""

    prompt: int = 0
    completion: int = 0
    status: int = 499  # the caller went away, unless we learn otherwise
    cache_hit: bool = False
    # Whether it left the queue for a model (or went upstream): one dropped before that
    # (its client left while it waited) never ran, and is charged nothing.
    reached: bool = False


def _slot(ctx: RequestContext, model: LocalModel, cost: int) -> AbstractAsyncContextManager[None]:
    """The request's turn at the model: by priority class, fair share and deadline."""
    principal = ctx.principal
    team = principal.team
    return model.queue.slot(
        f"team:{team.id}" if team else f"key:{principal.key.id}",
        cost,
        weight=team.weight if team else 1.0,
        batch=principal.key.priority == "batch",
        deadline=ctx.deadline,
    )


def _unsupported(model: str, kind: str) -> InvalidRequest:
    action = "text generation" if kind == "llm" else "embeddings"
    return InvalidRequest(
        f"The model '{model}' does not support {action}.",
        param="model",
        code="model_not_supported",
    )


def _estimate_tokens(prompt_input: dict[str, Any]) -> int:
    """Prompt tokens for admission when no local tokenizer applies: ~4 bytes a token
    plus a few per chat message; the upstream's reported usage settles the real count."""
    if "messages" in prompt_input:
        msgs = prompt_input["messages"]
        return sum(len(str(m.get("content") or "").encode()) // 4 + 4 for m in msgs) + 2
    return len(str(prompt_input.get("prompt") or "").encode()) // 4 + 1


def _capped(prompt_input: dict[str, Any], cap: int | None) -> dict[str, Any]:
    """The caller's max_tokens within the key's per-request cap (a remote deployment
    is told the cap when the caller asked for nothing)."""
    asked = prompt_input.get("max_tokens")
    if cap is None:
        return prompt_input
    if asked is not None and asked > cap:
        raise InvalidRequest(
            f"max_tokens is {asked}, above this key's limit of {cap} per request.",
            param="max_tokens",
            code="max_tokens_exceeded",
        )
    return {**prompt_input, "max_tokens": asked or cap}


def _worker_error(msg: Message) -> InferplaneError:
    kind = msg.get("kind")
    if kind == "context_length":
        return ContextLengthExceeded(
            prompt_tokens=int(msg["prompt_tokens"]),
            context_size=int(msg["context_size"]),
            param=str(msg.get("param") or "messages"),
        )
    if kind == "invalid":
        return InvalidRequest(str(msg.get("message")), param=msg.get("param"))
    # The worker's own message may hold internals; the client gets a generic one.
    return InferplaneError("The model failed while serving this request.", code="engine_error")

"""The request path: resolve model -> prepare -> admit -> invoke -> settle and record.

(Authentication runs before, in the HTTP layer's dependency.) Later stages (budgets,
guardrails, grounding, caching, routing) slot in here; the HTTP layer only ever calls
`InferenceService`.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from inferplane.engines.local import LocalModel
from inferplane.engines.prompts import PreparedPrompt
from inferplane.engines.protocol import Message
from inferplane.errors import (
    ContextLengthExceeded,
    InferplaneError,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
)
from inferplane.pipeline.admission import Admission, Admitter, rate_scopes
from inferplane.pipeline.context import RequestContext
from inferplane.pipeline.events import Embeddings, Finished, GenerationEvent, Started, TextDelta
from inferplane.telemetry.ledger import UsageLedger, UsageRecord, now_iso
from inferplane.telemetry.metrics import Metrics
from inferplane.tenancy.records import Principal

# Served (200) and abandoned-by-the-caller (499) requests cost what they used; failures
# of ours cost nothing.
_BILLED = frozenset({200, 499})
# Prompts longer than this are tokenized on a thread, off the event loop.
_INLINE_TOKENIZE_BYTES = 16_384


class InferenceService:
    def __init__(
        self,
        models: dict[str, LocalModel],
        admitter: Admitter,
        ledger: UsageLedger,
        metrics: Metrics,
    ):
        self.models = models
        self._admitter = admitter
        self._ledger = ledger
        self._metrics = metrics

    def visible_models(self, principal: Principal) -> list[LocalModel]:
        return [m for m in self.models.values() if principal.may_use(m.id)]

    def resolve(self, principal: Principal, model: str, kind: str | None = None) -> LocalModel:
        local = self.models.get(model)
        if local is None:
            raise ModelNotFound(model)
        if not principal.may_use(model):
            raise ModelNotAllowed(model)
        if kind is not None and local.kind != kind:
            action = "text generation" if kind == "llm" else "embeddings"
            raise InvalidRequest(
                f"The model '{model}' does not support {action}.",
                param="model",
                code="model_not_supported",
            )
        return local

    # -- generation ---------------------------------------------------------------------

    async def generate(
        self,
        ctx: RequestContext,
        model: LocalModel,
        prompt_input: dict[str, Any],
        size_hint: int,
        sampling: dict[str, Any],
    ) -> AsyncIterator[GenerationEvent]:
        """Run one generation; the first event is always `Started` (or an error is raised)."""
        scopes = rate_scopes(ctx.principal, model)
        caps = [s.limits.max_tokens for s in scopes if s.limits.max_tokens is not None]
        prompt = await self._prepare(model, size_hint, cap=min(caps, default=None), **prompt_input)
        n_prompt = len(prompt.tokens)
        admission = await self._admitter.admit(ctx, model, scopes, n_prompt, prompt.max_tokens)
        with self._accounted(ctx, model, admission, _Tally(n_prompt)) as tally:
            async for event in self._invoke(ctx, model, prompt, sampling):
                if isinstance(event, TextDelta):
                    tally.completion = event.tokens_so_far
                elif isinstance(event, Finished):
                    tally.completion, tally.status = event.completion_tokens, 200
                yield event

    async def _prepare(self, model: LocalModel, size_hint: int, **kwargs: Any) -> PreparedPrompt:
        """Template + tokenize + context check, with the model's own tokenizer."""
        assert model.prompts is not None
        if size_hint <= _INLINE_TOKENIZE_BYTES:
            return model.prompts.prepare(**kwargs)
        return await asyncio.to_thread(model.prompts.prepare, **kwargs)

    async def _invoke(
        self,
        ctx: RequestContext,
        model: LocalModel,
        prompt: PreparedPrompt,
        sampling: dict[str, Any],
    ) -> AsyncIterator[GenerationEvent]:
        ttft = self._metrics.time_to_first_token.labels(model.id)
        itl = self._metrics.inter_token_latency.labels(model.id)
        payload = {
            "op": "generate",
            **prompt.worker_payload(),
            **sampling,
            "scope": ctx.principal.org_scope,
        }
        cost = len(prompt.tokens) + prompt.max_tokens
        async with _slot(ctx, model, cost):
            async for event in self._stream(ctx, model, payload, ttft, itl):
                yield event

    async def _stream(
        self, ctx: RequestContext, model: LocalModel, payload: dict[str, Any], ttft: Any, itl: Any
    ) -> AsyncIterator[GenerationEvent]:
        client = await model.worker.client()
        last: float | None = None
        async for msg in client.stream(payload):
            event = msg["event"]
            if event == "token":
                now = time.perf_counter()
                if last is None:
                    ctx.first_token_at = now
                    ttft.observe(now - ctx.started)
                else:
                    itl.observe(now - last)
                last = now
                yield TextDelta(msg["text"], int(msg.get("n", 0)))
            elif event == "start":
                yield Started(int(msg["prompt_tokens"]))
            elif event == "done":
                done = Finished(
                    msg["finish_reason"], int(msg["prompt_tokens"]), int(msg["completion_tokens"])
                )
                self._meter(model.id, done.prompt_tokens, done.completion_tokens)
                yield done
            elif event == "error":
                raise _worker_error(msg)

    # -- embeddings ---------------------------------------------------------------------

    async def embed(self, ctx: RequestContext, model: LocalModel, inputs: list[str]) -> Embeddings:
        counter = model.embedding_tokens
        assert counter is not None
        if sum(map(len, inputs)) <= _INLINE_TOKENIZE_BYTES:
            tokens = counter.count(inputs)
        else:
            tokens = await asyncio.to_thread(counter.count, inputs)
        scopes = rate_scopes(ctx.principal, model)
        admission = await self._admitter.admit(ctx, model, scopes, sum(tokens), 0)
        with self._accounted(ctx, model, admission, _Tally(sum(tokens))) as tally:
            async with _slot(ctx, model, sum(tokens)):
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
        self, ctx: RequestContext, model: LocalModel, admission: Admission, tally: _Tally
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
            self._finish(ctx, model, admission, tally.prompt, tally.completion, tally.status)

    def _finish(
        self,
        ctx: RequestContext,
        model: LocalModel,
        admission: Admission,
        prompt: int,
        completion: int,
        status: int,
    ) -> None:
        """Settle the admission and write the ledger record (before the response ends)."""
        cost = admission.cost(prompt, completion) if status in _BILLED else 0
        admission.settle(prompt + completion, cost)
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
                model=model.id,
                deployment=model.deployment,
                model_version=model.version,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost_nusd=cost,
                price_id=price.id if price else None,
                latency_ms=(now - ctx.started) * 1000,
                ttft_ms=(ctx.first_token_at - ctx.started) * 1000 if ctx.first_token_at else None,
                status=status,
            )
        )

    def _meter(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        self._metrics.prompt_tokens.labels(model).inc(prompt_tokens)
        if completion_tokens:
            self._metrics.completion_tokens.labels(model).inc(completion_tokens)


@dataclass
class _Tally:
    prompt: int
    completion: int = 0
    status: int = 499  # the caller went away, unless we learn otherwise


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

"""The request path: authenticate -> resolve model -> prepare -> invoke -> meter.

Later stages (admission limits, guardrails, grounding, caching, routing) slot in here
as further steps; the HTTP layer only ever calls `InferenceService`.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

from inferplane.engines.local import LocalModel
from inferplane.engines.prompts import PreparedPrompt
from inferplane.engines.protocol import Message
from inferplane.errors import (
    ContextLengthExceeded,
    InferplaneError,
    InvalidRequest,
    ModelNotFound,
)
from inferplane.pipeline.context import RequestContext
from inferplane.pipeline.events import Embeddings, Finished, GenerationEvent, Started, TextDelta
from inferplane.telemetry.metrics import Metrics

# Prompts longer than this are tokenized on a thread, off the event loop.
_INLINE_TOKENIZE_BYTES = 16_384


class InferenceService:
    def __init__(self, models: dict[str, LocalModel], metrics: Metrics):
        self.models = models
        self._metrics = metrics

    def resolve(self, model: str, kind: str) -> LocalModel:
        local = self.models.get(model)
        if local is None:
            raise ModelNotFound(model)
        if local.kind != kind:
            action = "text generation" if kind == "llm" else "embeddings"
            raise InvalidRequest(
                f"The model '{model}' does not support {action}.",
                param="model",
                code="model_not_supported",
            )
        return local

    async def prepare(self, model: LocalModel, size_hint: int, **kwargs: Any) -> PreparedPrompt:
        """Template + tokenize + context check, with the model's own tokenizer."""
        assert model.prompts is not None
        if size_hint <= _INLINE_TOKENIZE_BYTES:
            return model.prompts.prepare(**kwargs)
        return await asyncio.to_thread(model.prompts.prepare, **kwargs)

    async def generate(
        self,
        ctx: RequestContext,
        model: LocalModel,
        prompt: PreparedPrompt,
        sampling: dict[str, Any],
    ) -> AsyncIterator[GenerationEvent]:
        """Run one generation; the first event is always `Started` (or an error is raised)."""
        client = await model.worker.client()
        last: float | None = None
        ttft = self._metrics.time_to_first_token.labels(model.id)
        itl = self._metrics.inter_token_latency.labels(model.id)
        payload = {"op": "generate", **prompt.worker_payload(), **sampling}
        async for msg in client.stream(payload):
            event = msg["event"]
            if event == "token":
                now = time.perf_counter()
                if last is None:
                    ttft.observe(now - ctx.started)
                else:
                    itl.observe(now - last)
                last = now
                yield TextDelta(msg["text"])
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

    async def embed(self, ctx: RequestContext, model: LocalModel, inputs: list[str]) -> Embeddings:
        assert model.embedding_tokens is not None
        counter = model.embedding_tokens
        if sum(map(len, inputs)) <= _INLINE_TOKENIZE_BYTES:
            tokens = counter.count(inputs)
        else:
            tokens = await asyncio.to_thread(counter.count, inputs)
        client = await model.worker.client()
        async for msg in client.stream({"op": "embed", "input": inputs}):
            if msg["event"] == "error":
                raise _worker_error(msg)
            if msg["event"] == "embeddings":
                self._meter(model.id, sum(tokens), 0)
                return Embeddings(base64.b64decode(msg["data"]), int(msg["dim"]), tokens)
        raise InferplaneError("The worker ended the request without a result.")

    def _meter(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        self._metrics.prompt_tokens.labels(model).inc(prompt_tokens)
        if completion_tokens:
            self._metrics.completion_tokens.labels(model).inc(completion_tokens)


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

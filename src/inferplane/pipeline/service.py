"""The request path: authenticate -> resolve model -> invoke -> meter.

Later stages (admission limits, guardrails, grounding, caching, routing) slot in here
as further steps; the HTTP layer only ever calls `InferenceService`.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from typing import Any

from inferplane.engines.protocol import Message
from inferplane.engines.supervisor import ManagedWorker, Supervisor
from inferplane.errors import (
    ContextLengthExceeded,
    InferplaneError,
    InvalidRequest,
    ModelNotFound,
)
from inferplane.pipeline.context import RequestContext
from inferplane.pipeline.events import Embeddings, Finished, GenerationEvent, Started, TextDelta
from inferplane.telemetry.metrics import Metrics


class InferenceService:
    def __init__(self, supervisor: Supervisor, metrics: Metrics):
        self._supervisor = supervisor
        self._metrics = metrics

    def resolve(self, model: str, kind: str) -> ManagedWorker:
        worker = self._supervisor.workers.get(model)
        if worker is None:
            raise ModelNotFound(model)
        engine_kind = "llm" if worker.spec.engine == "llamacpp" else "embedding"
        if engine_kind != kind:
            action = "text generation" if kind == "llm" else "embeddings"
            raise InvalidRequest(
                f"The model '{model}' does not support {action}.",
                param="model",
                code="model_not_supported",
            )
        return worker

    async def generate(
        self, ctx: RequestContext, worker: ManagedWorker, payload: dict[str, Any]
    ) -> AsyncIterator[GenerationEvent]:
        """Run one generation; the first event is always `Started` (or an error is raised)."""
        model = worker.spec.id
        client = await worker.client()
        last: float | None = None
        itl = self._metrics.inter_token_latency.labels(model)
        async for msg in client.stream({"op": "generate", **payload}):
            event = msg["event"]
            if event == "token":
                now = time.perf_counter()
                if last is None:
                    self._metrics.time_to_first_token.labels(model).observe(now - ctx.started)
                else:
                    itl.observe(now - last)
                last = now
                yield TextDelta(msg["text"])
            elif event == "start":
                yield Started(int(msg["prompt_tokens"]))
            elif event == "done":
                self._meter(model, int(msg["prompt_tokens"]), int(msg["completion_tokens"]))
                yield Finished(
                    msg["finish_reason"], int(msg["prompt_tokens"]), int(msg["completion_tokens"])
                )
            elif event == "error":
                raise _worker_error(msg)

    async def embed(
        self, ctx: RequestContext, worker: ManagedWorker, inputs: list[str]
    ) -> Embeddings:
        client = await worker.client()
        async for msg in client.stream({"op": "embed", "input": inputs}):
            if msg["event"] == "error":
                raise _worker_error(msg)
            if msg["event"] == "embeddings":
                tokens = [int(t) for t in msg["tokens"]]
                self._meter(worker.spec.id, sum(tokens), 0)
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

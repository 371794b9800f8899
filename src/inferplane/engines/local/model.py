"""Locally served models as engines: a GGUF LLM on llama.cpp, an embedding model on
sentence-transformers. Each has its spec, verified weights, its worker process, the fair
queue in front of it and the gateway-side tokenizer that counts and checks requests
before they are queued."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferplane.config import ModelSpec
from inferplane.engines.interface import Caller, Dispatched, GenerationInput, Prepared, Refusals
from inferplane.engines.local.assets import ModelAsset
from inferplane.engines.local.fair_queue import FairQueue
from inferplane.engines.local.prompts import EmbeddingTokens, LlamaPrompts, PreparedPrompt
from inferplane.engines.local.structured import grammar_for
from inferplane.engines.local.supervisor import ManagedWorker
from inferplane.engines.local.tools import read_tool_calls
from inferplane.engines.local.wire import Vectors, generation_event, vectors
from inferplane.engines.worker.protocol import Embed, Generate, Sampling
from inferplane.errors import InferplaneError, UnsupportedParameter
from inferplane.events import Embeddings, GenerationEvent
from inferplane.telemetry.metrics import Metrics

# Prompts longer than this are tokenized on a thread, off the event loop.
_INLINE_TOKENIZE_BYTES = 16_384


@dataclass
class LocalModel(Refusals):
    """What every local model has; `LocalLLM` and `LocalEmbedder` are the engines."""

    spec: ModelSpec
    asset: ModelAsset
    worker: ManagedWorker
    queue: FairQueue

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def name(self) -> str:
        return self.spec.id

    @property
    def kind(self) -> str:
        return self.spec.engine

    @property
    def version(self) -> str:
        return self.asset.version

    @property
    def deployment(self) -> str:
        """The name of the deployment serving a model named directly."""
        return f"local/{self.spec.id}"

    @property
    def is_llm(self) -> bool:
        return self.spec.engine == "llamacpp"

    @property
    def counts(self) -> bool:
        return True  # its own tokenizer counts every request

    @property
    def timeout_s(self) -> float | None:
        return None  # its queue and the request's deadline bound the wait

    async def check(self) -> bool:
        return self.worker.ready  # the supervisor pings and restarts it

    async def aclose(self) -> None:
        """Nothing: the supervisor owns the worker process."""

    def _slot(self, caller: Caller, cost: int, units: int = 1) -> AbstractAsyncContextManager[None]:
        """The request's turn at the model: by priority class, fair share and deadline."""
        return self.queue.slot(
            caller.share,
            cost,
            weight=caller.weight,
            batch=caller.batch,
            deadline=caller.deadline,
            units=units,
        )


@dataclass
class LocalLLM(LocalModel):
    prompts: LlamaPrompts | None = None

    async def prepare(self, request: GenerationInput) -> Prepared:
        """Template + tokenize + context check, with the model's own tokenizer."""
        assert self.prompts is not None
        # Truncation tokenizes the chat again per step of its search: a thread sooner.
        inline = _INLINE_TOKENIZE_BYTES // (8 if self.spec.context_policy == "truncate" else 1)
        if request.size_hint <= inline:
            prompt = self.prompts.prepare(**request.prompt, cap=request.cap)
        else:
            prompt = await asyncio.to_thread(
                self.prompts.prepare, **request.prompt, cap=request.cap
            )
        return Prepared(len(prompt.tokens), prompt.max_tokens, prompt, prompt.dropped_turns)

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
        prompt: PreparedPrompt = prepared.payload
        events = self._generate(prompt, sampling, caller, dispatched)
        return read_tool_calls(events) if prompt.grammar is not None else events

    async def _generate(
        self,
        prompt: PreparedPrompt,
        sampling: dict[str, Any],
        caller: Caller,
        dispatched: Dispatched,
    ) -> AsyncIterator[GenerationEvent]:
        # Built here, lazily: what it raises (a schema refused) comes inside the
        # attempt that reads the events, which then settles its bookkeeping.
        op = Generate(
            prompt.tokens,
            prompt.max_tokens,
            prompt.stop,
            prompt.lstrip,
            Sampling.of(sampling),
            caller.scope,
            sampling.get("logprobs"),
            prompt.grammar or grammar_for(sampling.get("response_format")),
            n=int(sampling.get("n") or 1),
        )
        cost = len(op.tokens) + op.max_tokens * op.n
        async with self._slot(caller, cost, units=op.n):
            dispatched(len(op.tokens))
            client = await self.worker.client()
            async for msg in client.stream(op):
                event = generation_event(msg)
                if event is not None:
                    yield event

    def refusal(
        self, prompt: Mapping[str, Any], sampling: Mapping[str, Any]
    ) -> UnsupportedParameter | None:
        """Tools that may be called and a response format together (the answer is
        decoded under one grammar, either the calls' or the format's); more answers
        (`n`) than the model decodes sequences at once."""
        format_asked = (sampling.get("response_format") or {}).get("type", "text") != "text"
        if format_asked and prompt.get("tools") and prompt.get("tool_choice") != "none":
            return UnsupportedParameter("response_format", "together with tools")
        if (sampling.get("n") or 1) > self.spec.parallel:
            return UnsupportedParameter("n", f"above {self.spec.parallel} (the model's parallel)")
        return None


@dataclass
class LocalEmbedder(LocalModel):
    tokens: EmbeddingTokens | None = None

    async def count(self, inputs: list[str]) -> list[int]:
        assert self.tokens is not None
        if sum(map(len, inputs)) <= _INLINE_TOKENIZE_BYTES:
            return self.tokens.count(inputs)
        return await asyncio.to_thread(self.tokens.count, inputs)

    async def embed(
        self, inputs: list[str], tokens: list[int], caller: Caller, dispatched: Dispatched
    ) -> Embeddings:
        async with self._slot(caller, sum(tokens)):
            dispatched(sum(tokens))
            got = await self._vectors(inputs)
        return Embeddings(got.data, got.dim, tokens)

    async def vectors(self, texts: list[str]) -> np.ndarray:
        """Vectors for the gateway's own use (the semantic cache, the complexity
        classifier): straight to the worker, neither queued behind callers nor billed.
        float32, one row per text."""
        got = await self._vectors(texts)
        return np.frombuffer(got.data, dtype=np.float32).reshape(len(texts), got.dim)

    async def _vectors(self, texts: list[str]) -> Vectors:
        client = await self.worker.client()
        async for msg in client.stream(Embed(texts)):
            got = vectors(msg)
            if got is not None:
                return got
        raise InferplaneError("The worker ended the request without a result.")


def load_local_model(
    spec: ModelSpec, asset: ModelAsset, worker: ManagedWorker, metrics: Metrics
) -> LocalModel:
    """Load the gateway-side tokenizer (blocking: call it from a thread)."""
    depth = metrics.queue_depth.labels(spec.id).set
    wait = metrics.queue_wait.labels(spec.id).observe
    if spec.engine == "llamacpp":
        # As many dispatch slots as the worker decodes sequences at once.
        queue = FairQueue(
            spec.id,
            capacity=spec.slots,
            max_queue=spec.max_queue,
            headroom=spec.slots - spec.parallel,
            on_depth=depth,
            on_wait=wait,
        )
        return LocalLLM(spec, asset, worker, queue, prompts=LlamaPrompts(spec, asset.path))
    queue = FairQueue(
        spec.id,
        capacity=spec.max_batch_size,
        max_queue=spec.max_queue,
        on_depth=depth,
        on_wait=wait,
    )
    return LocalEmbedder(spec, asset, worker, queue, tokens=EmbeddingTokens(asset.path))


def as_embedder(model: LocalModel) -> LocalEmbedder:
    """The model as an embedding model (the settings checked that it is one)."""
    assert isinstance(model, LocalEmbedder), f"{model.id} is not an embedding model"
    return model

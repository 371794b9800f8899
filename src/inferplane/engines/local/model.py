"""A locally served model: its spec, verified weights, tokenizer and worker process."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from inferplane.config import ModelSpec
from inferplane.engines.local.assets import ModelAsset
from inferplane.engines.local.fair_queue import FairQueue
from inferplane.engines.local.prompts import EmbeddingTokens, LlamaPrompts
from inferplane.engines.local.supervisor import ManagedWorker
from inferplane.telemetry.metrics import Metrics


@dataclass
class LocalModel:
    spec: ModelSpec
    asset: ModelAsset
    worker: ManagedWorker
    queue: FairQueue
    prompts: LlamaPrompts | None = None  # LLMs
    embedding_tokens: EmbeddingTokens | None = None  # embedding models

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def version(self) -> str:
        return self.asset.version

    @property
    def deployment(self) -> str:
        """Where the model is served: a local worker (remote deployments come later)."""
        return f"local/{self.spec.id}"

    @property
    def kind(self) -> str:
        return "llm" if self.spec.engine == "llamacpp" else "embedding"

    async def vectors(self, texts: list[str]) -> np.ndarray:
        """An embedding model's vectors for the gateway's own use (the semantic cache,
        the complexity classifier): straight to the worker, neither queued behind
        callers nor billed. float32, one row per text."""
        client = await self.worker.client()
        async for msg in client.stream({"op": "embed", "input": texts}):
            if msg["event"] == "embeddings":
                data = np.frombuffer(base64.b64decode(msg["data"]), dtype=np.float32)
                return data.reshape(len(texts), int(msg["dim"]))
            if msg["event"] == "error":
                raise RuntimeError(f"internal embedding by '{self.id}' failed")
        raise RuntimeError(f"the embedding worker of '{self.id}' ended without a result")


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
        return LocalModel(spec, asset, worker, queue, prompts=LlamaPrompts(spec, asset.path))
    queue = FairQueue(
        spec.id,
        capacity=spec.max_batch_size,
        max_queue=spec.max_queue,
        on_depth=depth,
        on_wait=wait,
    )
    return LocalModel(spec, asset, worker, queue, embedding_tokens=EmbeddingTokens(asset.path))

"""A locally served model: its spec, verified weights, tokenizer and worker process."""

from __future__ import annotations

from dataclasses import dataclass

from inferplane.config import ModelSpec
from inferplane.engines.assets import ModelAsset
from inferplane.engines.fair_queue import FairQueue
from inferplane.engines.prompts import EmbeddingTokens, LlamaPrompts
from inferplane.engines.supervisor import ManagedWorker
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

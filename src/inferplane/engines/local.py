"""A locally served model: its spec, verified weights, tokenizer and worker process."""

from __future__ import annotations

from dataclasses import dataclass

from inferplane.config import ModelSpec
from inferplane.engines.assets import ModelAsset
from inferplane.engines.prompts import EmbeddingTokens, LlamaPrompts
from inferplane.engines.supervisor import ManagedWorker


@dataclass
class LocalModel:
    spec: ModelSpec
    asset: ModelAsset
    worker: ManagedWorker
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


def load_local_model(spec: ModelSpec, asset: ModelAsset, worker: ManagedWorker) -> LocalModel:
    """Load the gateway-side tokenizer (blocking: call it from a thread)."""
    if spec.engine == "llamacpp":
        return LocalModel(spec, asset, worker, prompts=LlamaPrompts(spec, asset.path))
    return LocalModel(spec, asset, worker, embedding_tokens=EmbeddingTokens(asset.path))

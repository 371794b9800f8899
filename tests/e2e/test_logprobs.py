"""Log probabilities from the local model, through the official openai client: the
engine's own softmax, in chat's and the legacy completions' shapes, streamed or not."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from tests.e2e.server import Server

MODEL = "gemma-3-270m"
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def reference(gguf_path: Path, vocab: Any) -> Iterator[np.ndarray]:
    """The model's log-softmax for the token after PROMPT, computed in this process."""
    from llama_cpp import Llama

    # As the engine decodes: flash attention on (llama.cpp's default on CPU, "auto").
    llm = Llama(
        model_path=str(gguf_path), n_ctx=256, logits_all=True, flash_attn=True, verbose=True
    )
    tokens = vocab.tokenize(PROMPT.encode(), True, False)
    llm.eval(tokens)
    row = np.array(llm.scores[len(tokens) - 1], dtype=np.float64)
    llm.close()
    top = row.max()
    yield row - (top + math.log(np.exp(row - top).sum()))


def test_completion_logprobs_are_the_models_softmax(
    server: Server, reference: np.ndarray, vocab: Any
) -> None:
    resp = server.client().completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=3
    )
    lp = resp.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert lp.text_offset is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    # The first token: greedy picks the most likely, and every log probability is the
    # model's own, to 1e-3 (the server decodes in its batched context; near-equal
    # alternatives are compared by value, not by order).
    best = np.argsort(-reference)[:3]
    assert lp.tokens[0] == vocab.detokenize([int(best[0])]).decode()
    assert lp.token_logprobs[0] == pytest.approx(reference[best[0]], abs=1e-3)
    reported = lp.top_logprobs[0]
    assert sorted(reported.values(), reverse=True) == list(reported.values())
    assert list(reported.values()) == pytest.approx(list(reference[best]), abs=1e-3)
    for token, value in reported.items():
        (token_id,) = vocab.tokenize(token.encode(), False, False)
        assert value == pytest.approx(reference[token_id], abs=1e-3)
    assert "".join(lp.tokens) == resp.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(4)]


def test_echo_with_logprobs_is_refused_by_name(server: Server) -> None:
    """OpenAI's would cover the echoed prompt too, which is not computed here."""
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=2, logprobs=0, echo=True
        )
    assert caught.value.param == "logprobs"


def test_completion_logprobs_false_is_not_zero(server: Server) -> None:
    """`false` is not a count: 400, not log probabilities nobody asked for."""
    with server.http() as http:
        resp = http.post(
            "/v1/completions",
            json={"model": MODEL, "prompt": PROMPT, "max_tokens": 1, "logprobs": False},
        )
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "logprobs"


def _chat(server: Server, **kwargs: Any) -> Any:
    return server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        **kwargs,
    )


def test_chat_logprobs_streamed_or_not(server: Server) -> None:
    whole = _chat(server)
    content = whole.choices[0].logprobs.content
    assert 0 < len(content) <= 8
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 2
        # Greedy: the chosen token is the most likely one.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == entry.logprob
        assert entry.bytes == list(entry.token.encode())
    text = whole.choices[0].message.content
    assert "".join(e.token for e in content).strip() == text.strip()
    streamed = [
        entry
        for chunk in _chat(server, stream=True)
        if chunk.choices and chunk.choices[0].logprobs
        for entry in chunk.choices[0].logprobs.content
    ]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]


def test_without_logprobs_there_are_none(server: Server) -> None:
    resp = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=2,
    )
    assert resp.choices[0].logprobs is None

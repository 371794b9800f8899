"""Chat and text completions through the official openai client, against the real model."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from inferplane.config.defaults import DEFAULT_CHAT_TEMPLATE
from inferplane.engines.local.chat_template import ChatTemplate
from tests.e2e.server import Server

MODEL = "gemma-3-270m"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_returns_model_text_and_tokenizer_usage(server: Server, vocab: Any) -> None:
    resp = server.client().chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=20,
        temperature=0,  # type: ignore[arg-type]
    )
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert "Paris" in (choice.message.content or "")
    assert choice.finish_reason in {"stop", "length"}
    prompt = ChatTemplate(DEFAULT_CHAT_TEMPLATE).render(QUESTION)
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == len(vocab.tokenize(prompt.encode(), True, True))
    assert 0 < resp.usage.completion_tokens <= 20
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.system_fingerprint and resp.system_fingerprint.startswith("sha256:")


def test_chat_stream_with_usage(server: Server) -> None:
    stream = server.client().chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    usage = chunks[-1].usage
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "Paris" in text
    assert finish == ["stop"] or finish == ["length"]
    assert usage is not None and usage.completion_tokens > 0
    # The streamed text equals the non-streamed reply with the same settings.
    full = server.client().chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=12,
        temperature=0,  # type: ignore[arg-type]
    )
    assert full.choices[0].message.content == text
    assert full.usage is not None and full.usage.completion_tokens == usage.completion_tokens


def test_completion_usage_matches_tokenizer_and_max_tokens(server: Server, vocab: Any) -> None:
    prompt = "Once upon a time, in a small village by the sea,"
    resp = server.client().completions.create(
        model=MODEL, prompt=prompt, max_tokens=7, temperature=0
    )
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == len(vocab.tokenize(prompt.encode(), True, True))
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 7
    assert resp.choices[0].text.strip()


def test_completion_stream(server: Server) -> None:
    prompt = "The three primary colors are"
    chunks = list(
        server.client().completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    whole = server.client().completions.create(
        model=MODEL, prompt=prompt, max_tokens=8, temperature=0
    )
    assert text == whole.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_stop_sequence_is_honoured(server: Server) -> None:
    client = server.client()
    prompt = "List of fruits: apple, banana, cherry,"
    free = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
    text = free.choices[0].text
    words = [w for w in text.split() if len(w) > 3]
    assert words, f"the model produced no usable word: {text!r}"
    stop = words[len(words) // 2]
    stopped = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stop=[stop]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index(stop)]


def test_seeded_sampling_is_reproducible(server: Server) -> None:
    client = server.client()
    kwargs: dict[str, Any] = {"model": MODEL, "prompt": "My favourite animal is", "max_tokens": 16}
    greedy = [client.completions.create(**kwargs, temperature=0, seed=7) for _ in range(2)]
    assert greedy[0].choices[0].text == greedy[1].choices[0].text
    sampled = [client.completions.create(**kwargs, temperature=1.0, seed=1234) for _ in range(2)]
    assert sampled[0].choices[0].text == sampled[1].choices[0].text


def test_eight_concurrent_streams_all_complete(server: Server) -> None:
    def one(i: int) -> tuple[str, str | None]:
        stream = server.client().chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Count to {i + 3}."}],
            max_tokens=16,
            temperature=0,
            stream=True,
        )
        text, finish = "", None
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert len(results) == 8
    for text, finish in results:
        assert finish in {"stop", "length"}
        assert text or finish == "stop"


def test_models_listing(server: Server) -> None:
    client = server.client()
    ids = {m.id for m in client.models.list()}
    assert ids == {"gemma-3-270m", "all-minilm-l6-v2"}
    assert client.models.retrieve(MODEL).id == MODEL


def test_max_completion_tokens_is_honoured(server: Server) -> None:
    resp = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long poem about autumn leaves."}],
        max_completion_tokens=4,
        temperature=0,
    )
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 4
    assert resp.choices[0].finish_reason == "length"

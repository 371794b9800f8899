"""`n` answers to one request on the bundled model, through the official openai client:
forked from one prefill of the prompt, streamed and not, on both endpoints."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from tests.e2e.server import Server, metric

MODEL = "gemma-3-270m"


def _prefilled(server: Server) -> float:
    return metric(server, "inferplane_engine_tokens_total", model=MODEL, kind="prompt")


def test_four_choices_with_one_prefill(server: Server) -> None:
    client = server.client()
    ask: Any = [{"role": "user", "content": "Name a colour and say why you like it."}]
    greedy = client.chat.completions.create(
        model=MODEL, messages=ask, n=3, temperature=0, max_tokens=12
    )
    assert [c.index for c in greedy.choices] == [0, 1, 2]
    assert len({c.message.content for c in greedy.choices}) == 1  # the same answer thrice
    before = _prefilled(server)
    sampled = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a fruit. Any fruit, quickly."}],
        n=4,
        temperature=1.0,
        seed=3,
        max_tokens=12,
    )
    assert [c.index for c in sampled.choices] == [0, 1, 2, 3]
    assert len({c.message.content for c in sampled.choices}) > 1
    assert all(c.finish_reason in ("stop", "length") for c in sampled.choices)
    assert sampled.usage is not None
    assert 4 <= sampled.usage.completion_tokens <= 4 * 12  # all four answers' tokens
    # The engine reports its steps about twice a second: wait for the count to settle.
    prefilled = _settled(lambda: _prefilled(server))
    assert prefilled - before == sampled.usage.prompt_tokens  # one prefill, not four


def _settled(read: Any) -> float:
    last, deadline = read(), time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.6)
        now = read()
        if now == last:
            return float(now)
        last = now
    return float(last)


def test_choices_stream_each_with_its_index(server: Server) -> None:
    chunks = list(
        server.client().chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count: one, two,"}],
            n=3,
            temperature=0.9,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert sorted(texts) == sorted(finishes) == [0, 1, 2]
    assert all(texts.values())
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 3


def test_completions_choices_echo_each(server: Server) -> None:
    resp = server.client().completions.create(
        model=MODEL, prompt="Once upon a time", n=2, echo=True, max_tokens=6, temperature=0.8
    )
    assert [c.index for c in resp.choices] == [0, 1]
    assert all(c.text.startswith("Once upon a time") for c in resp.choices)


def test_every_choice_of_a_tool_call_is_read(server: Server) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    }
    resp = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Add 2 and 3."}],
        tools=[tool],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        n=2,
        max_tokens=40,
    )
    for choice in resp.choices:
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls or []
        assert call.function.name == "add"  # type: ignore[union-attr]


def test_more_choices_than_the_model_decodes_at_once_are_refused_by_name(
    server: Server,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().chat.completions.create(
            # The bundled model decodes 16 sequences at once (its `parallel`).
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            n=17,
            max_tokens=2,
        )
    assert caught.value.param == "n"

"""What an OpenAI-compatible upstream does itself is relayed: inferplane in front of
llama-cpp-python's own server (a real upstream, on the bundled GGUF), called with the
official openai client. A named tool_choice passes through and the upstream's tool calls
come back (streamed as OpenAI streams them); the upstream's log probabilities come back
in both of OpenAI's shapes, as it computed them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.e2e.server import Server, running_server
from tests.e2e.upstreams import LlamaCppServer


@dataclass
class Setup:
    server: Server
    upstream: LlamaCppServer


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, gguf_path: Path) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("relay")
    upstream = LlamaCppServer(gguf_path, tmp / "upstream.log", chat_format="gemma").start()
    config = tmp / "config.yaml"
    config.write_text(
        f"""
models:
  - id: relay
    deployments:
      - {{name: llama-cpp, engine: openai_compatible, base_url: "{upstream.url}",
         model: gemma, timeout_s: 120}}
"""
    )
    try:
        with running_server(tmp / "data", config=config) as server:
            yield Setup(server, upstream)
    finally:
        upstream.stop()


CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": CITY}},
    {"type": "function", "function": {"name": "get_time", "parameters": CITY}},
]
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_a_named_tool_choice_passes_through_and_its_call_comes_back(setup: Setup) -> None:
    client = setup.server.client()
    named: Any = {"type": "function", "function": {"name": "get_weather"}}
    args = {"model": "relay", "messages": ASK, "tools": TOOLS, "tool_choice": named}
    whole = client.chat.completions.create(**args, max_tokens=24, temperature=0)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), CITY)
    chunks = list(client.chat.completions.create(**args, max_tokens=24, temperature=0, stream=True))
    pieces = [p for c in chunks if c.choices for p in c.choices[0].delta.tool_calls or []]
    assert pieces[0].id and pieces[0].function and pieces[0].function.name == "get_weather"
    assert all(p.id is None and p.function and p.function.name is None for p in pieces[1:])
    streamed = "".join(p.function.arguments or "" for p in pieces if p.function)
    assert streamed == call.function.arguments  # greedy: the same call
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def _direct(setup: Setup, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The upstream's own log probabilities, asked without inferplane. Asked twice: its
    logits move a little (0.05) with how much of the previous prompt it reuses, and the
    second answer is computed as the relayed ones after it are (the same prompt before)."""
    for _ in range(2):
        resp = httpx.post(
            f"{setup.upstream.url}/{path}", json={"model": "gemma", **body}, timeout=120
        )
        assert resp.status_code == 200, resp.text
    return dict(resp.json()["choices"][0]["logprobs"])


def test_chat_logprobs_are_the_upstreams(setup: Setup) -> None:
    asked: dict[str, Any] = {"max_tokens": 3, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    question = [{"role": "user", "content": "What is the capital of France?"}]
    own = _direct(setup, "chat/completions", {"messages": question, **asked})["content"]
    assert len(own) == 3
    client = setup.server.client()
    whole = client.chat.completions.create(model="relay", messages=question, **asked)  # type: ignore[arg-type]
    assert whole.choices[0].logprobs is not None and whole.choices[0].logprobs.content
    content = whole.choices[0].logprobs.content
    assert [(e.token, e.logprob) for e in content] == [
        (e["token"], pytest.approx(e["logprob"], abs=1e-3)) for e in own
    ]
    for entry, theirs in zip(content, own, strict=True):
        assert entry.bytes == list(entry.token.encode())  # the upstream sent none
        assert [a.token for a in entry.top_logprobs] == [a["token"] for a in theirs["top_logprobs"]]
    stream = client.chat.completions.create(model="relay", messages=question, stream=True, **asked)  # type: ignore[arg-type]
    streamed = [
        entry
        for chunk in stream
        if chunk.choices and chunk.choices[0].logprobs
        for entry in chunk.choices[0].logprobs.content or []
    ]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]


def test_completion_logprobs_are_the_upstreams(setup: Setup) -> None:
    asked: dict[str, Any] = {"prompt": "The capital of France is", "max_tokens": 3, "logprobs": 2}
    own = _direct(setup, "completions", {**asked, "temperature": 0})
    client = setup.server.client()
    whole = client.completions.create(model="relay", temperature=0, **asked)
    got = whole.choices[0].logprobs
    assert got is not None and got.tokens == own["tokens"]
    assert got.token_logprobs == pytest.approx(own["token_logprobs"], abs=1e-3)
    assert got.top_logprobs is not None and [list(t) for t in got.top_logprobs] == [
        list(t) for t in own["top_logprobs"]
    ]
    assert got.text_offset == [sum(len(t) for t in own["tokens"][:i]) for i in range(3)]
    stream = client.completions.create(model="relay", temperature=0, stream=True, **asked)
    tokens = [
        t for c in stream if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens or []
    ]
    assert tokens == own["tokens"]

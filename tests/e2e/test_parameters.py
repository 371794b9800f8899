"""Every parameter of OpenAI's request schemas is honoured or refused by name, never
dropped: a sweep over the official client's own parameter lists, against the real
server on the bundled model."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai.types import completion_create_params as text_params
from openai.types.chat import completion_create_params as chat_params

from tests.e2e.server import Server

MODEL = "gemma-3-270m"
MESSAGES = [{"role": "user", "content": "Say hi."}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

HONOURED, REFUSED = "honoured", "refused"
# Each parameter of /v1/chat/completions: a value that asks for something, and what the
# server does with it. Hints that do not change the answer (cache keys, identifiers,
# `parallel_tool_calls` without tools) are honoured by answering as asked.
CHAT: dict[str, tuple[Any, str]] = {
    "audio": ({"voice": "alloy", "format": "wav"}, REFUSED),
    "frequency_penalty": (0.5, HONOURED),
    "function_call": ("auto", REFUSED),
    "functions": ([TOOL["function"]], REFUSED),
    "logit_bias": ({"1": 5}, HONOURED),
    "logprobs": (True, HONOURED),
    "max_completion_tokens": (2, HONOURED),
    "max_tokens": (2, HONOURED),
    "messages": (MESSAGES, HONOURED),
    "metadata": ({"k": "v"}, HONOURED),
    "modalities": (["text", "audio"], REFUSED),
    "model": (MODEL, HONOURED),
    "moderation": ({"model": "omni-moderation-latest"}, REFUSED),
    "n": (2, HONOURED),
    "parallel_tool_calls": (False, HONOURED),
    "prediction": ({"type": "content", "content": "hi"}, REFUSED),
    "presence_penalty": (0.5, HONOURED),
    "prompt_cache_key": ("k", HONOURED),
    "prompt_cache_options": ({"mode": "implicit"}, HONOURED),
    "prompt_cache_retention": ("24h", HONOURED),
    "reasoning_effort": ("low", REFUSED),
    "response_format": ({"type": "json_object"}, HONOURED),
    "safety_identifier": ("user-1", HONOURED),
    "seed": (7, HONOURED),
    "service_tier": ("flex", REFUSED),
    "stop": (["\n"], HONOURED),
    "store": (True, REFUSED),
    "stream_options": ({"include_usage": True}, HONOURED),  # with stream=True
    "temperature": (0.5, HONOURED),
    "tool_choice": ("required", REFUSED),  # alone: it needs tools (test_tools.py)
    "tools": ([TOOL], HONOURED),
    "top_logprobs": (2, REFUSED),  # without logprobs: 400 naming it (with: honoured)
    "top_p": (0.5, HONOURED),
    "user": ("user-1", HONOURED),
    "verbosity": ("low", REFUSED),
    "web_search_options": ({}, REFUSED),
}
TEXT: dict[str, tuple[Any, str]] = {
    "best_of": (2, REFUSED),
    "echo": (True, HONOURED),
    "frequency_penalty": (0.5, HONOURED),
    "logit_bias": ({"1": 5}, HONOURED),
    "logprobs": (2, HONOURED),
    "max_tokens": (2, HONOURED),
    "model": (MODEL, HONOURED),
    "n": (2, HONOURED),
    "presence_penalty": (0.5, HONOURED),
    "prompt": ("Hello", HONOURED),
    "seed": (7, HONOURED),
    "stop": (["\n"], HONOURED),
    "stream_options": ({"include_usage": True}, HONOURED),
    "suffix": ("!", REFUSED),
    "temperature": (0.5, HONOURED),
    "top_p": (0.5, HONOURED),
    "user": ("user-1", HONOURED),
}
# What vLLM, llama.cpp's server and TGI accept beside OpenAI's (sent as `extra_body`).
EXTENSIONS_HONOURED: dict[str, Any] = {"top_k": 40, "min_p": 0.1, "repetition_penalty": 1.2}
EXTENSIONS: dict[str, Any] = {
    "typical_p": 0.5,
    "min_tokens": 2,
    "ignore_eos": True,
    "guided_json": {"type": "object"},
    "guided_regex": "[a-z]+",
    "guided_choice": ["a", "b"],
    "guided_grammar": 'root ::= "a"',
    "grammar": 'root ::= "a"',
    "json_schema": {"type": "object"},
}


def _keys(params: Any) -> set[str]:
    return set(params.CompletionCreateParamsBase.__annotations__)


def test_the_sweep_covers_the_clients_parameter_lists() -> None:
    """A parameter the SDK gains fails here until it is classified above."""
    assert _keys(chat_params) == set(CHAT)
    assert _keys(text_params) == set(TEXT)


def _call(server: Server, chat: bool, name: str, value: Any, *, extra: bool = False) -> Any:
    client = server.client()
    kwargs: dict[str, Any] = {"model": MODEL, "max_tokens": 2, "temperature": 0}
    if chat:
        kwargs["messages"] = MESSAGES
    else:
        kwargs["prompt"] = "Hello"
    if name == "stream_options":
        kwargs["stream"] = True
    if extra:
        kwargs["extra_body"] = {name: value}
    else:
        kwargs[name] = value
    create = client.chat.completions.create if chat else client.completions.create
    result = create(**kwargs)
    return list(result) if kwargs.get("stream") else result


def _check(server: Server, chat: bool, name: str, value: Any, verdict: str, extra: bool) -> None:
    if verdict == HONOURED:
        assert _call(server, chat, name, value, extra=extra)
        return
    with pytest.raises(openai.BadRequestError) as caught:
        _call(server, chat, name, value, extra=extra)
    error = caught.value
    assert error.status_code == 400
    assert error.param == name, error.body
    assert name in error.message


@pytest.mark.parametrize("name", sorted(CHAT))
def test_chat_parameters(server: Server, name: str) -> None:
    value, verdict = CHAT[name]
    _check(server, True, name, value, verdict, extra=False)


@pytest.mark.parametrize("name", sorted(TEXT))
def test_completions_parameters(server: Server, name: str) -> None:
    value, verdict = TEXT[name]
    _check(server, False, name, value, verdict, extra=False)


@pytest.mark.parametrize("name", sorted(EXTENSIONS))
def test_open_server_extensions_are_refused(server: Server, name: str) -> None:
    _check(server, True, name, EXTENSIONS[name], REFUSED, extra=True)
    _check(server, False, name, EXTENSIONS[name], REFUSED, extra=True)


@pytest.mark.parametrize("name", sorted(EXTENSIONS_HONOURED))
def test_open_server_extensions_the_sampler_has(server: Server, name: str) -> None:
    _check(server, True, name, EXTENSIONS_HONOURED[name], HONOURED, extra=True)
    _check(server, False, name, EXTENSIONS_HONOURED[name], HONOURED, extra=True)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("tools", []),
        ("tool_choice", "none"),
        ("response_format", {"type": "text"}),
        ("logprobs", False),
        ("modalities", ["text"]),
        ("store", False),
        ("service_tier", "auto"),
    ],
)
def test_a_value_that_asks_for_nothing_is_accepted(server: Server, name: str, value: Any) -> None:
    resp = _call(server, True, name, value)
    assert resp.choices[0].message.content is not None


def test_unknown_extras_are_ignored(server: Server) -> None:
    resp = _call(server, True, "x_trace_note", "anything", extra=True)
    assert resp.choices[0].finish_reason in {"stop", "length"}


def _token(vocab: Any, text: str) -> int:
    (token,) = vocab.tokenize(text.encode(), False, False)
    return int(token)


def test_logit_bias_steers_the_model(server: Server, vocab: Any) -> None:
    client = server.client()
    banana = _token(vocab, " banana")
    forced = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=3, temperature=0, logit_bias={str(banana): 100}
    )
    assert forced.choices[0].text == " banana" * 3
    question = [{"role": "user", "content": "What is the capital of France?"}]
    plain = client.chat.completions.create(
        model=MODEL,
        messages=question,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
    )
    assert "Paris" in (plain.choices[0].message.content or "")
    banned = {str(_token(vocab, word)): -100 for word in ("Paris", " Paris")}
    steered = client.chat.completions.create(
        model=MODEL,
        messages=question,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        logit_bias=banned,  # type: ignore[arg-type]
    )
    assert "Paris" not in (steered.choices[0].message.content or "")


def test_a_logit_bias_token_outside_the_vocabulary_is_named(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _call(server, False, "logit_bias", {"999999999": 5})
    assert caught.value.param == "logit_bias"


def test_null_is_the_default(server: Server) -> None:
    """OpenAI's schema allows null for these; some SDKs send it."""
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": 2,
        "temperature": None,
        "top_p": None,
        "n": None,
        "presence_penalty": None,
        "frequency_penalty": None,
        "stream": None,
    }
    with server.http() as http:
        resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text


def test_a_token_id_has_one_spelling_in_logit_bias(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _call(server, True, "logit_bias", {"01": 5, "1": 5})
    assert caught.value.param is not None and caught.value.param.startswith("logit_bias")

"""Structured outputs on the bundled model through the official openai client: answers
under `response_format` parse, and follow the schema (every one of them)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import openai
import pytest

from tests.e2e.server import Server

MODEL = "gemma-3-270m"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": PERSON, "strict": True},
}
ASK = [{"role": "user", "content": "Describe a person as JSON."}]


def _ask(server: Server, response_format: Any, seed: int, stream: bool) -> tuple[str, str]:
    client = server.client()
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": ASK,
        "max_tokens": 96,
        "temperature": 0.8,
        "top_p": 0.95,
        "seed": seed,
        "response_format": response_format,
    }
    if not stream:
        resp = client.chat.completions.create(**kwargs)
        return resp.choices[0].message.content or "", resp.choices[0].finish_reason
    text, finish = "", ""
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


def test_json_schema_answers_follow_the_schema(server: Server) -> None:
    """100 sampled answers, half of them streamed: each parses and validates."""
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda i: _ask(server, SCHEMA_FORMAT, i, stream=i % 2 == 1), range(100))
        )
    for text, finish in answers:
        assert finish == "stop", text
        jsonschema.validate(json.loads(text), PERSON)


def test_json_object_answers_parse(server: Server) -> None:
    for seed in range(5):
        text, finish = _ask(server, {"type": "json_object"}, seed, stream=False)
        if finish == "stop":
            assert isinstance(json.loads(text), dict)
        else:  # cut at max_tokens, as OpenAI's may be: still JSON so far
            assert text.lstrip().startswith("{")


def test_a_schema_that_cannot_be_followed_is_named(server: Server) -> None:
    bad = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object", "$ref": "#/nowhere"}},
    }
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(server, bad, 0, stream=False)
    assert caught.value.param is not None and caught.value.param.startswith("response_format")


def test_a_schema_keyword_the_grammar_cannot_enforce_is_named(server: Server) -> None:
    """Followed in part is not followed: `maximum` is not in the grammar converter."""
    schema = {"type": "object", "properties": {"age": {"type": "integer", "maximum": 120}}}
    bounded = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(server, bounded, 0, stream=False)
    assert caught.value.param == "response_format.json_schema.schema"
    assert "'maximum' (at schema.properties.age)" in caught.value.message

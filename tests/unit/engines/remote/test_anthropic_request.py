"""OpenAI requests in the form of Anthropic's Messages API: the cases the end-to-end tests
(against the fake, `tests/e2e/test_anthropic.py`) do not reach."""

from __future__ import annotations

from typing import Any

import pytest

from inferplane.engines.remote import anthropic_request

TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}


def _body(prompt: dict[str, Any], sampling: dict[str, Any] | None = None) -> dict[str, Any]:
    return anthropic_request.body("m", prompt, sampling or {}, stream=False, default_max_tokens=8)


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", True, {"type": "any"}),
        (
            {"type": "function", "function": {"name": "add"}},
            False,
            {"type": "tool", "name": "add", "disable_parallel_tool_use": True},
        ),
        ("none", False, {"type": "none"}),  # that type has no such field
    ],
)
def test_tool_choice(choice: Any, parallel: bool | None, expected: dict[str, Any]) -> None:
    prompt = {
        "messages": [{"role": "user", "content": "x"}],
        "tools": [TOOL],
        "tool_choice": choice,
    }
    if parallel is not None:
        prompt["parallel_tool_calls"] = parallel
    assert _body(prompt)["tool_choice"] == expected


def test_a_user_turn_after_tool_results_joins_their_turn_after_them() -> None:
    """The API wants a call's results first in the very next user turn."""
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": ""}}
    messages = [
        {"role": "user", "content": "add"},
        {"role": "assistant", "content": "Adding.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "2"},
        {"role": "user", "content": "thanks"},
    ]
    assert _body({"messages": messages})["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Adding."},
                {"type": "tool_use", "id": "c1", "name": "add", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "2"},
                {"type": "text", "text": "thanks"},
            ],
        },
    ]


def test_a_schema_whose_root_is_no_object_is_refused_by_name() -> None:
    """A tool's input is an object: such a schema has no forced tool to become."""
    schema = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "array"}}}
    refused = anthropic_request.refusal({"messages": []}, {"response_format": schema})
    assert refused is not None and refused.param == "response_format"

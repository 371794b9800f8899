"""Render chat messages into a prompt with a Jinja2 template (sandboxed)."""

from __future__ import annotations

import json
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from inferplane.errors import InvalidRequest


def _tojson(value: Any, indent: int | None = None) -> str:
    # As Hugging Face renders models' templates: plain JSON, not Jinja's HTML-safe one
    # (which writes `<` as `\u003c`).
    return json.dumps(value, ensure_ascii=False, indent=indent)


class ChatTemplate:
    def __init__(self, source: str):
        env = ImmutableSandboxedEnvironment(trim_blocks=False, lstrip_blocks=False)
        env.filters["tojson"] = _tojson
        self._template = env.from_string(source)

    def render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
    ) -> str:
        """The prompt (`messages` as `with_parsed_arguments` gives them, where they hold
        tool calls)."""
        try:
            return self._template.render(
                messages=messages,
                tools=tools or None,
                tool_choice=tool_choice,
                add_generation_prompt=True,
            )
        except TemplateError as exc:
            raise InvalidRequest(
                f"The messages cannot be rendered with this model's chat template: {exc}",
                param="messages",
            ) from exc


def with_parsed_arguments(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with their tool calls' arguments (JSON text in OpenAI's API) as
    objects where they parse, as models' own templates expect them; and each tool
    result named after the function whose call it answers (OpenAI's `name` of a tool
    message), so that a template can tell parallel calls' results apart."""
    names = {
        call["id"]: call["function"]["name"] for m in messages for call in m.get("tool_calls") or []
    }
    out = []
    for message in messages:
        if message.get("tool_calls"):
            message = _parsed(message)
        elif message.get("role") == "tool" and message.get("tool_call_id") in names:
            message = {"name": names[message["tool_call_id"]], **message}
        out.append(message)
    return out


def _parsed(message: dict[str, Any]) -> dict[str, Any]:
    calls = message["tool_calls"]
    parsed = []
    for call in calls:
        function = call["function"]
        try:
            arguments = json.loads(function["arguments"])
        except ValueError:
            arguments = function["arguments"]
        parsed.append({**call, "function": {**function, "arguments": arguments}})
    return {**message, "tool_calls": parsed}

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
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str:
        """The prompt. Tool calls' arguments (JSON text in OpenAI's API) are given to
        the template as objects where they parse, as models' own templates expect."""
        if any(m.get("tool_calls") for m in messages):
            messages = [_with_parsed_arguments(m) for m in messages]
        try:
            return self._template.render(
                messages=messages, tools=tools or None, add_generation_prompt=True
            )
        except TemplateError as exc:
            raise InvalidRequest(
                f"The messages cannot be rendered with this model's chat template: {exc}",
                param="messages",
            ) from exc


def _with_parsed_arguments(message: dict[str, Any]) -> dict[str, Any]:
    calls = message.get("tool_calls")
    if not calls:
        return message
    parsed = []
    for call in calls:
        function = call["function"]
        try:
            arguments = json.loads(function["arguments"])
        except ValueError:
            arguments = function["arguments"]
        parsed.append({**call, "function": {**function, "arguments": arguments}})
    return {**message, "tool_calls": parsed}

"""Render chat messages into a prompt with a Jinja2 template (sandboxed)."""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from inferplane.errors import InvalidRequest


class ChatTemplate:
    def __init__(self, source: str):
        env = ImmutableSandboxedEnvironment(trim_blocks=False, lstrip_blocks=False)
        self._template = env.from_string(source)

    def render(self, messages: list[dict[str, Any]]) -> str:
        try:
            return self._template.render(messages=messages, add_generation_prompt=True)
        except TemplateError as exc:
            raise InvalidRequest(
                f"The messages cannot be rendered with this model's chat template: {exc}",
                param="messages",
            ) from exc

"""OpenAI chat and completion requests in the form of Anthropic's Messages API.

Turns: system and developer turns become the `system` parameter; the others alternate
user/assistant, consecutive turns of one role joined (texts with a blank line between,
blocks side by side); a text completion's prompt is one user turn. An assistant turn's
tool calls become `tool_use` blocks after its text, their arguments (JSON text in
OpenAI's API) parsed into the object `input` must be; `tool` turns become a user turn of
`tool_result` blocks, so the results of one round of calls travel together, as the API
wants them. A turn of text alone is sent as a plain string.

Tools: each function becomes {name, description, input_schema}; tool_choice auto,
required, a named function and none become auto, any, tool and none, and
`parallel_tool_calls: false` becomes their `disable_parallel_tool_use`.

JSON mode, which the API lacks: `response_format` becomes one tool the model must call,
named after the schema, whose `input_schema` is the schema (json_object: any object);
the engine answers with that call's input as the message's text (`json_tool`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from inferplane.errors import UnsupportedParameter

JSON_OBJECT_TOOL = "json_object"  # the forced tool of json_object mode, which names none
_CHOICES = {"auto": "auto", "required": "any", "none": "none"}


def refusal(prompt: Mapping[str, Any], sampling: Mapping[str, Any]) -> UnsupportedParameter | None:
    """What of the request has no translation: JSON mode beside the caller's own tools
    (both would need `tool_choice`), a schema whose root is not an object (a tool's
    input is one), tool call arguments that are not a JSON object."""
    response_format = sampling.get("response_format")
    if response_format and prompt.get("tools"):
        return UnsupportedParameter("response_format", "together with tools")
    if response_format and response_format["type"] == "json_schema":
        schema = response_format["json_schema"].get("schema") or {"type": "object"}
        if schema.get("type") != "object":
            return UnsupportedParameter("response_format", "with a schema whose root is no object")
    for msg in prompt.get("messages") or []:
        for call in msg.get("tool_calls") or []:
            if not isinstance(_arguments(call), dict):
                return UnsupportedParameter(
                    "messages", "with tool call arguments that are not a JSON object"
                )
    return None


def body(
    model: str,
    prompt_input: Mapping[str, Any],
    sampling: Mapping[str, Any],
    *,
    stream: bool,
    default_max_tokens: int,
) -> dict[str, Any]:
    """The Messages API request (after `refusal` let it through)."""
    if "messages" in prompt_input:
        system, turns = _turns(prompt_input["messages"])
    else:
        system, turns = [], [{"role": "user", "content": str(prompt_input.get("prompt") or "")}]
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": "(continue)"})
    out: dict[str, Any] = {
        "model": model,
        "messages": turns,
        "max_tokens": prompt_input.get("max_tokens") or default_max_tokens,
        "stream": stream,
    }
    if system:
        out["system"] = "\n\n".join(system)
    if prompt_input.get("stop"):
        out["stop_sequences"] = list(prompt_input["stop"])
    if sampling.get("temperature") is not None:
        out["temperature"] = float(sampling["temperature"])  # at most 1: the engine's refusal
    if sampling.get("top_p") is not None and sampling["top_p"] < 1:
        out["top_p"] = sampling["top_p"]
    if sampling.get("top_k"):
        out["top_k"] = sampling["top_k"]
    forced = _json_mode_tool(sampling)
    if forced is not None:
        out["tools"] = [forced]
        out["tool_choice"] = {"type": "tool", "name": forced["name"]}
    elif prompt_input.get("tools"):
        out["tools"] = [_tool(t["function"]) for t in prompt_input["tools"]]
        out["tool_choice"] = _tool_choice(
            prompt_input.get("tool_choice") or "auto", prompt_input.get("parallel_tool_calls")
        )
    return out


def json_tool(sampling: Mapping[str, Any]) -> str | None:
    """The name of JSON mode's forced tool, whose input is the answer (None: no JSON
    mode)."""
    forced = _json_mode_tool(sampling)
    return None if forced is None else str(forced["name"])


def _turns(messages: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    system: list[str] = []
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for msg in messages:
        if msg["role"] in ("system", "developer"):
            system.append(str(msg.get("content") or ""))
            continue
        role = "assistant" if msg["role"] == "assistant" else "user"
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(_blocks(msg))
        else:
            turns.append((role, _blocks(msg)))
    return system, [{"role": role, "content": _content(blocks)} for role, blocks in turns]


def _blocks(msg: dict[str, Any]) -> list[dict[str, Any]]:
    text = str(msg.get("content") or "")
    if msg["role"] == "tool":
        return [{"type": "tool_result", "tool_use_id": msg["tool_call_id"], "content": text}]
    blocks = [{"type": "text", "text": text}]
    for call in msg.get("tool_calls") or []:
        blocks.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": call["function"]["name"],
                "input": _arguments(call),
            }
        )
    return blocks


def _content(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A turn's content: its texts as one string, or, beside tool blocks, its blocks
    (empty texts left out: the API refuses an empty text block)."""
    if all(b["type"] == "text" for b in blocks):
        return "\n\n".join(b["text"] for b in blocks)
    return [b for b in blocks if b["type"] != "text" or b["text"]]


def _arguments(call: Mapping[str, Any]) -> Any:
    try:
        return orjson.loads(call["function"]["arguments"] or "{}")
    except orjson.JSONDecodeError:
        return None


def _tool(function: Mapping[str, Any]) -> dict[str, Any]:
    tool: dict[str, Any] = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        tool["description"] = function["description"]
    return tool


def _tool_choice(choice: str | Mapping[str, Any], parallel: bool | None) -> dict[str, Any]:
    if isinstance(choice, str):
        out: dict[str, Any] = {"type": _CHOICES[choice]}
    else:
        out = {"type": "tool", "name": choice["function"]["name"]}
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def _json_mode_tool(sampling: Mapping[str, Any]) -> dict[str, Any] | None:
    response_format = sampling.get("response_format")
    if not response_format:
        return None
    if response_format["type"] == "json_object":
        return {"name": JSON_OBJECT_TOOL, "input_schema": {"type": "object"}}
    spec = response_format["json_schema"]
    tool: dict[str, Any] = {
        # OpenAI's schema names allow what a tool's name does not (spaces, dots).
        "name": re.sub(r"[^a-zA-Z0-9_-]", "_", spec["name"]),
        "input_schema": spec.get("schema") or {"type": "object"},
    }
    if spec.get("description"):
        tool["description"] = spec["description"]
    return tool

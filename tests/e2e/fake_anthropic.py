"""A small fake of Anthropic's Messages API (the one paid provider that cannot run
here), as a separate HTTP server on a real socket.

It answers `POST /v1/messages` as the API documents: a message with text and `tool_use`
content blocks, `stop_reason` and `usage`, or, with `"stream": true`, the event stream
(message_start, ping, then per block content_block_start, content_block_delta...
(`text_delta`, or `input_json_delta` pieces of a tool's input), content_block_stop; then
message_delta, message_stop). The reply is deterministic: tool calls as `tool_choice`
asks (`_reply`), else "You said: <last user turn>" (a tool result's content counts as
said), cut at `max_tokens` words (one word = one token here). It refuses, with the API's
400, what the API refuses of tools and tool turns (`_tools_problem`, `_turns_problem`).
Every request is kept in `requests` (headers and body); `fail_next` queues error answers
(status, type, retry-after); a model named in `refusing` declines every request
(stop_reason "refusal", no content, as the API does when its safety filters stop a reply).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.e2e.app_server import serving
from tests.e2e.server import free_port

API_KEY = "sk-ant-fake-test-key-0123456789"


@dataclass
class FakeAnthropic:
    port: int = field(default_factory=free_port)
    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_next: list[tuple[int, str, str | None]] = field(default_factory=list)
    delay_s: float = 0.0  # between streamed text deltas
    refusing: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeAnthropic:
        app = Starlette(routes=[Route("/v1/messages", self._messages, methods=["POST"])])
        self._serving = serving(app, self.port, "fake Anthropic server")
        self._serving.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._serving.__exit__(None, None, None)

    async def _messages(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": body})
        if request.headers.get("x-api-key") != API_KEY:
            return _error(401, "authentication_error", "invalid x-api-key")
        if request.headers.get("anthropic-version") is None:
            return _error(400, "invalid_request_error", "anthropic-version header is required")
        if self.fail_next:
            status, kind, retry_after = self.fail_next.pop(0)
            headers = {"retry-after": retry_after} if retry_after else None
            return _error(status, kind, "injected", headers)
        if not isinstance(body.get("max_tokens"), int):
            return _error(400, "invalid_request_error", "max_tokens: Field required")
        problem = _tools_problem(body) or _turns_problem(body["messages"])
        if problem is not None:
            return _error(400, "invalid_request_error", problem)
        blocks, stop = _reply(body, len(self.requests))
        if body["model"] in self.refusing:
            blocks, stop = [], "refusal"
        input_tokens = sum(len(str(m["content"]).split()) for m in body["messages"])
        input_tokens += len(str(body.get("system", "")).split())
        output_tokens = sum(len(_block_text(b).split()) for b in blocks)
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": blocks,
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
                }
            )
        events = _events(body["model"], blocks, stop, (input_tokens, output_tokens), self.delay_s)
        return StreamingResponse(events, media_type="text/event-stream")


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _reply(body: dict[str, Any], number: int) -> tuple[list[dict[str, Any]], str]:
    """The answer's content blocks and stop reason. Tools are called as `tool_choice`
    says: `any` calls every tool (the first alone with parallel use disabled), `tool` the
    named one, `auto` those the last user turn names (after a line of text, as the model
    writes one there), `none` none; each call's input holds the tool's required
    properties (`_example`). Otherwise: the text, cut at `max_tokens` words."""
    said = _turn_text(next(m for m in reversed(body["messages"]) if m["role"] == "user"))
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    chosen = {
        "any": tools,
        "tool": [t for t in tools if t["name"] == choice.get("name")],
        "auto": [t for t in tools if t["name"] in said.split()],
    }.get(choice["type"], [])
    if choice.get("disable_parallel_tool_use"):
        chosen = chosen[:1]
    calls = [
        {
            "type": "tool_use",
            "id": f"toolu_{number:04d}_{i}",
            "name": tool["name"],
            "input": _example(tool["input_schema"]),
        }
        for i, tool in enumerate(chosen)
    ]
    if calls:
        if choice["type"] != "auto":
            return calls, "tool_use"
        return [{"type": "text", "text": "Calling the tools."}, *calls], "tool_use"
    words = f"You said: {said}".split(" ")
    if len(words) > body["max_tokens"]:
        return [{"type": "text", "text": " ".join(words[: body["max_tokens"]])}], "max_tokens"
    return [{"type": "text", "text": " ".join(words)}], "end_turn"


def _example(schema: dict[str, Any]) -> Any:
    """A value of a JSON schema: objects with their required properties only."""
    if "enum" in schema:
        return schema["enum"][0]
    examples = {"string": "text", "integer": 1, "number": 0.5, "boolean": True, "array": []}
    if schema.get("type") == "object":
        properties = schema.get("properties") or {}
        return {name: _example(properties.get(name, {})) for name in schema.get("required", [])}
    return examples.get(str(schema.get("type")))


def _turn_text(turn: dict[str, Any]) -> str:
    """A turn's words: its text, or its text blocks' and tool results' contents."""
    if isinstance(turn["content"], str):
        return str(turn["content"])
    return " ".join(_block_text(b) for b in turn["content"])


def _block_text(block: dict[str, Any]) -> str:
    if block["type"] == "tool_use":
        return json.dumps(block["input"])
    if block["type"] == "tool_result":
        content = block.get("content", "")
        return content if isinstance(content, str) else " ".join(b["text"] for b in content)
    return str(block.get("text", ""))


def _tools_problem(body: dict[str, Any]) -> str | None:
    """What the API refuses in `tools` and `tool_choice`."""
    names = []
    for i, tool in enumerate(body.get("tools") or []):
        if not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", str(tool.get("name"))):
            return f"tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
        if (tool.get("input_schema") or {}).get("type") != "object":
            return f"tools.{i}.input_schema.type: Input should be 'object'"
        names.append(tool["name"])
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if choice.get("type") not in ("auto", "any", "tool", "none"):
        return "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"
    if choice["type"] in ("any", "tool") and not names:
        return "tool_choice: tool_choice may only be specified while providing tools"
    if choice["type"] == "tool" and choice.get("name") not in names:
        return f"Tool '{choice.get('name')}' not found in provided tools"
    extra = set(choice) - {"type", "name", "disable_parallel_tool_use"}
    return f"tool_choice: Extra inputs are not permitted: {sorted(extra)}" if extra else None


def _turns_problem(messages: list[dict[str, Any]]) -> str | None:
    """What the API refuses in the turns' blocks: an empty text block, a tool_use whose
    input is not an object, tool uses not answered by tool_result blocks (coming first)
    in the very next user turn, a result answering no use just before."""
    asked: list[str] = []  # the previous assistant turn's tool_use ids
    for i, turn in enumerate(messages):
        blocks = turn["content"] if isinstance(turn["content"], list) else []
        if any(b["type"] == "text" and not b.get("text") for b in blocks):
            return f"messages.{i}: text content blocks must be non-empty"
        results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
        kinds = [b["type"] for b in blocks]
        if turn["role"] == "user" and kinds[: len(results)] != ["tool_result"] * len(results):
            return f"messages.{i}: tool_result blocks must come first in the content"
        if set(results) - set(asked) or (turn["role"] == "user" and set(asked) - set(results)):
            return f"messages.{i}: tool_use ids were found without tool_result blocks"
        uses = [b for b in blocks if b["type"] == "tool_use"]
        if any(not isinstance(b.get("input"), dict) for b in uses):
            return f"messages.{i}: tool_use.input: Input should be a valid dictionary"
        asked = [b["id"] for b in uses] if turn["role"] == "assistant" else []
    return None


async def _events(
    model: str, blocks: list[dict[str, Any]], stop: str, usage: tuple[int, int], delay_s: float
) -> AsyncIterator[str]:
    """The answer as the API streams it: text in words, a tool use's input as JSON text
    in pieces (after an empty one, as the API sends)."""

    def event(kind: str, data: dict[str, Any]) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

    message = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": usage[0], "output_tokens": 1},
    }
    yield event("message_start", {"message": message})
    yield event("ping", {})
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            yield event(
                "content_block_start", {"index": index, "content_block": {**block, "text": ""}}
            )
            words = block["text"].split(" ")
            deltas = [
                {"type": "text_delta", "text": w if i == 0 else " " + w}
                for i, w in enumerate(words)
            ]
        else:
            yield event(
                "content_block_start", {"index": index, "content_block": {**block, "input": {}}}
            )
            text = json.dumps(block["input"])
            half = len(text) // 2
            deltas = [
                {"type": "input_json_delta", "partial_json": p}
                # As Claude: a call without arguments sends only the empty piece.
                for p in (("", text[:half], text[half:]) if block["input"] else ("",))
            ]
        for delta in deltas:
            await asyncio.sleep(delay_s)
            yield event("content_block_delta", {"index": index, "delta": delta})
        yield event("content_block_stop", {"index": index})
    yield event(
        "message_delta",
        {
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": usage[1]},
        },
    )
    yield event("message_stop", {})

"""A small fake of Anthropic's Messages API (the one paid provider that cannot run
here), as a separate HTTP server on a real socket.

It answers `POST /v1/messages` as the API documents: a message with text content
blocks, `stop_reason` and `usage`, or, with `"stream": true`, the event stream
(message_start, content_block_start, ping, content_block_delta..., content_block_stop,
message_delta, message_stop). The reply is deterministic: "You said: <last user turn>",
cut at `max_tokens` words (one word = one token here). Every request is kept in
`requests` (headers and body); `fail_next` queues error answers (status, type,
retry-after); a model named in `refusing` declines every request (stop_reason
"refusal", no text, as the API does when its safety filters stop a reply).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

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
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake Anthropic server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)

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
        last_user = next(m for m in reversed(body["messages"]) if m["role"] == "user")
        words = f"You said: {last_user['content']}".split(" ")
        stop = "end_turn"
        if len(words) > body["max_tokens"]:
            words, stop = words[: body["max_tokens"]], "max_tokens"
        if body["model"] in self.refusing:
            words, stop = [], "refusal"
        input_tokens = sum(len(str(m["content"]).split()) for m in body["messages"])
        input_tokens += len(str(body.get("system", "")).split())
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [{"type": "text", "text": " ".join(words)}] if words else [],
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": len(words)},
                }
            )
        return StreamingResponse(
            _events(body["model"], words, stop, input_tokens, self.delay_s),
            media_type="text/event-stream",
        )


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _events(
    model: str, words: list[str], stop: str, input_tokens: int, delay_s: float
) -> AsyncIterator[str]:
    def event(kind: str, data: dict[str, Any]) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

    message = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    yield event("message_start", {"message": message})
    yield event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    yield event("ping", {})
    for i, word in enumerate(words):
        await asyncio.sleep(delay_s)
        text = word if i == 0 else " " + word
        yield event(
            "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}}
        )
    yield event("content_block_stop", {"index": 0})
    yield event(
        "message_delta",
        {
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": len(words)},
        },
    )
    yield event("message_stop", {})

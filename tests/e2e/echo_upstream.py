"""An OpenAI-compatible upstream that echoes: a separate HTTP server on a real socket,
standing in for an external provider whose side of the wire a test must see.

`POST /v1/chat/completions` answers "You said: <the last user turn>" (model `parrot`:
the turn itself), whole or streamed
in pieces of `piece` characters (so that a test sees values split across chunks); every
request body is kept in `requests`, in order.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.e2e.app_server import serving
from tests.e2e.server import free_port


@dataclass
class EchoUpstream:
    piece: int = 3
    port: int = field(default_factory=free_port)
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> EchoUpstream:
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])
        self._serving = serving(app, self.port, "echo upstream")
        self._serving.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._serving.__exit__(None, None, None)

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        said = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        text = said if body.get("model") == "parrot" else f"You said: {said}"
        usage = {"prompt_tokens": len(said.split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if not body.get("stream"):
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return JSONResponse(_completion(body, "chat.completion", [choice], usage))
        return StreamingResponse(self._pieces(body, text, usage), media_type="text/event-stream")

    async def _pieces(
        self, body: dict[str, Any], text: str, usage: dict[str, int]
    ) -> AsyncIterator[str]:
        for i in range(0, len(text), self.piece):
            delta = {"index": 0, "delta": {"content": text[i : i + self.piece]}}
            yield _event(_completion(body, "chat.completion.chunk", [delta], None))
        end = {"index": 0, "delta": {}, "finish_reason": "stop"}
        yield _event(_completion(body, "chat.completion.chunk", [end], usage))
        yield "data: [DONE]\n\n"


def _completion(
    body: dict[str, Any], kind: str, choices: list[dict[str, Any]], usage: dict[str, int] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": "chatcmpl-echo",
        "object": kind,
        "created": int(time.time()),
        "model": body.get("model", "echo"),
        "choices": choices,
    }
    if usage is not None:
        out["usage"] = usage
    return out


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"

"""HTTP <-> service translation for /v1/chat/completions."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from inferplane.api.auth import AnyKey
from inferplane.api.errors import parse_body
from inferplane.api.openai import generation, logprobs
from inferplane.api.openai.chat_completion.protocol import ChatCompletionRequest
from inferplane.api.openai.common import new_id, usage
from inferplane.api.responses import FastJSONResponse
from inferplane.events import Finished, GenerationEvent, TextDelta, ToolCallDelta

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(request: Request, principal: AnyKey) -> Response:
    body = await parse_body(request, ChatCompletionRequest)
    gen = await generation.start(request, principal, body, "chat.completions")
    completion_id, created = new_id("chatcmpl"), int(time.time())
    if body.stream:
        return generation.sse_response(
            request,
            gen,
            _chunks(completion_id, created, body.model, gen.version, body.include_usage, body.n),
        )
    got = await generation.collect(request, gen)
    done = got.done
    return FastJSONResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "system_fingerprint": gen.version,
            "choices": [_choice(k, answer) for k, answer in enumerate(got.answers)],
            "usage": usage(done.prompt_tokens, done.completion_tokens),
        }
    )


def _choice(index: int, answer: generation.Answer) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
    if answer.calls:
        message["tool_calls"] = answer.tool_calls
        message["content"] = answer.text or None  # as OpenAI answers a call without words
    return {
        "index": index,
        "message": message,
        "logprobs": None if answer.logprobs is None else logprobs.chat(answer.logprobs),
        "finish_reason": answer.finish_reason,
    }


def _chunks(
    completion_id: str, created: int, model: str, version: str, include_usage: bool, n: int
) -> generation.ChunkFormatter:
    base = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": version,
    }
    chunks = generation.Chunks(base, include_usage)
    text = chunks.text_event(
        lambda t: {"delta": {"content": t}, "logprobs": None, "finish_reason": None}
    )

    def format_event(event: GenerationEvent) -> bytes:
        if isinstance(event, TextDelta):
            if event.logprobs is None and not event.choice:
                return text(event.text)
            reported = None if event.logprobs is None else logprobs.chat(event.logprobs)
            piece = {"delta": {"content": event.text}, "logprobs": reported}
            return chunks.data({**piece, "finish_reason": None}, event.choice)
        if isinstance(event, ToolCallDelta):
            piece = {"delta": _tool_call(event), "logprobs": None, "finish_reason": None}
            return chunks.data(piece, event.choice)
        if isinstance(event, Finished):
            return chunks.finish({"delta": {}}, event)
        role = {"delta": {"role": "assistant", "content": ""}, "logprobs": None}  # Started
        return b"".join(chunks.data({**role, "finish_reason": None}, k) for k in range(n))

    return format_event


def _tool_call(event: ToolCallDelta) -> dict[str, Any]:
    """A tool call's piece as OpenAI streams it: the first with its id, type and name."""
    function: dict[str, str] = {"arguments": event.arguments}
    call: dict[str, Any] = {"index": event.index, "function": function}
    if event.id is not None:
        call["id"], call["type"] = event.id, "function"
    if event.name is not None:
        function["name"] = event.name
    return {"tool_calls": [call]}

"""HTTP <-> service translation for /v1/completions."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from inferplane.api.auth import AnyKey
from inferplane.api.errors import parse_body
from inferplane.api.openai import generation, logprobs
from inferplane.api.openai.common import new_id, usage
from inferplane.api.openai.completion.protocol import CompletionRequest
from inferplane.api.responses import FastJSONResponse
from inferplane.events import Finished, GenerationEvent, Started, TextDelta

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def create_completion(request: Request, principal: AnyKey) -> Response:
    body = await parse_body(request, CompletionRequest)
    gen = await generation.start(request, principal, body, "completions")
    completion_id, created = new_id("cmpl"), int(time.time())
    prefix = str(body.prompt) if body.echo else ""
    if body.stream:
        return generation.sse_response(
            request,
            gen,
            _chunks(completion_id, created, body.model, gen.version, body.include_usage, prefix),
        )
    got = await generation.collect(request, gen)
    done = got.done
    return FastJSONResponse(
        {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "system_fingerprint": gen.version,
            "choices": [
                {
                    "index": 0,
                    "text": prefix + got.text,
                    "logprobs": (
                        None
                        if got.logprobs is None
                        else logprobs.TextLogprobs(len(prefix))(got.logprobs)
                    ),
                    "finish_reason": done.finish_reason,
                }
            ],
            "usage": usage(done.prompt_tokens, done.completion_tokens),
        }
    )


def _chunks(
    completion_id: str, created: int, model: str, version: str, include_usage: bool, prefix: str
) -> generation.ChunkFormatter:
    base = {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": version,
    }
    chunks = generation.Chunks(base, include_usage)
    text = chunks.text_event(lambda t: {"text": t, "logprobs": None, "finish_reason": None})
    text_logprobs = logprobs.TextLogprobs(len(prefix))

    def format_event(event: GenerationEvent) -> bytes:
        if isinstance(event, TextDelta):
            if event.logprobs is None:
                return text(event.text)
            reported = text_logprobs(event.logprobs)
            return chunks.data({"text": event.text, "logprobs": reported, "finish_reason": None})
        if isinstance(event, Finished):
            return chunks.finish({"text": ""}, event)
        if isinstance(event, Started) and prefix:
            return text(prefix)  # echo the prompt first
        return b""  # no tool calls here: this endpoint takes no tools

    return format_event

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
            _chunks(
                completion_id, created, body.model, gen.version, body.include_usage, prefix, body.n
            ),
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
                    "index": k,
                    "text": prefix + answer.text,
                    "logprobs": (
                        None
                        if answer.logprobs is None
                        else logprobs.TextLogprobs(len(prefix))(answer.logprobs)
                    ),
                    "finish_reason": answer.finish_reason,
                }
                for k, answer in enumerate(got.answers)
            ],
            "usage": usage(done.prompt_tokens, done.completion_tokens),
        }
    )


def _chunks(
    completion_id: str,
    created: int,
    model: str,
    version: str,
    include_usage: bool,
    prefix: str,
    n: int,
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
    text_logprobs: dict[int, logprobs.TextLogprobs] = {}  # per answer

    def format_event(event: GenerationEvent) -> bytes:
        if isinstance(event, TextDelta):
            if event.logprobs is None and not event.choice:
                return text(event.text)
            reported = None
            if event.logprobs is not None:
                offsets = text_logprobs.get(event.choice) or text_logprobs.setdefault(
                    event.choice, logprobs.TextLogprobs(len(prefix))
                )
                reported = offsets(event.logprobs)
            piece = {"text": event.text, "logprobs": reported, "finish_reason": None}
            return chunks.data(piece, event.choice)
        if isinstance(event, Finished):
            return chunks.finish({"text": ""}, event)
        if isinstance(event, Started) and prefix:  # echo the prompt first, in each answer
            piece = {"text": prefix, "logprobs": None, "finish_reason": None}
            return b"".join(chunks.data(piece, k) for k in range(n))
        return b""  # no tool calls here: this endpoint takes no tools

    return format_event

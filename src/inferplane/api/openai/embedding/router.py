"""HTTP <-> service translation for /v1/embeddings."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from inferplane.api.auth import AnyKey
from inferplane.api.errors import parse_body
from inferplane.api.openai.common import mark_served, queue_deadline
from inferplane.api.openai.embedding import token_ids
from inferplane.api.openai.embedding.protocol import EmbeddingRequest
from inferplane.api.responses import FastJSONResponse
from inferplane.api.services import services
from inferplane.errors import InvalidRequest
from inferplane.pipeline.context import RequestContext

router = APIRouter()


@router.post("/v1/embeddings", response_model=None)
async def create_embeddings(request: Request, principal: AnyKey) -> FastJSONResponse:
    body = await parse_body(request, EmbeddingRequest)
    svc = services(request)
    model = svc.inference.catalogue.embedder(principal, body.model)
    mark_served(request, model)
    dim = int(model.worker.info.get("dimensions") or 0)
    if body.dimensions is not None and body.dimensions != dim:
        raise InvalidRequest(
            f"The model '{body.model}' returns {dim} dimensions and cannot be shortened.",
            param="dimensions",
        )
    ctx = RequestContext(
        request.state.request_id,
        principal,
        "embeddings",
        user=body.user,
        deadline=queue_deadline(request),
        outcome=request.state.outcome,
    )
    ids = body.token_ids
    texts = body.texts if ids is None else await asyncio.to_thread(token_ids.decode, ids)
    result = await svc.inference.embed(ctx, model, texts)
    tokens = sum(result.tokens)
    # Returned as a ready response: FastAPI's generic encoder walks every float in Python.
    return FastJSONResponse(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": e}
                for i, e in enumerate(_encode(result.vectors, result.dim, body.encoding_format))
            ],
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def _encode(vectors: bytes, dim: int, encoding_format: str) -> list[Any]:
    if encoding_format == "base64":
        row = dim * 4
        return [
            base64.b64encode(vectors[i : i + row]).decode() for i in range(0, len(vectors), row)
        ]
    return list(np.frombuffer(vectors, dtype=np.float32).reshape(-1, dim))

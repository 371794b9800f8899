"""HTTP <-> service translation for /v1/embeddings."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from inferplane.api.auth import AnyKey
from inferplane.api.errors import parse_body
from inferplane.api.openai.embedding.protocol import EmbeddingRequest
from inferplane.api.services import services
from inferplane.errors import InvalidRequest
from inferplane.pipeline.context import RequestContext

router = APIRouter()


@router.post("/v1/embeddings")
async def create_embeddings(request: Request, principal: AnyKey) -> dict[str, Any]:
    body = await parse_body(request, EmbeddingRequest)
    svc = services(request)
    worker = svc.inference.resolve(body.model, "embedding")
    request.state.model = body.model
    request.state.model_version = worker.asset.version
    dim = int(worker.info.get("dimensions") or 0)
    if body.dimensions is not None and body.dimensions != dim:
        raise InvalidRequest(
            f"The model '{body.model}' returns {dim} dimensions and cannot be shortened.",
            param="dimensions",
        )
    ctx = RequestContext(request.state.request_id, principal)
    result = await svc.inference.embed(ctx, worker, body.inputs)
    matrix = np.frombuffer(result.vectors, dtype=np.float32).reshape(-1, result.dim)
    data = []
    for index, row in enumerate(matrix):
        embedding: Any = (
            base64.b64encode(row.tobytes()).decode()
            if body.encoding_format == "base64"
            else row.tolist()
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(result.tokens)
    return {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }

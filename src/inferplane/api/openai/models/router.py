"""The models callers may use."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from inferplane.api.auth import AnyKey
from inferplane.api.openai.common import mark_served
from inferplane.api.services import services
from inferplane.engines.supervisor import ManagedWorker
from inferplane.errors import ModelNotFound

router = APIRouter()


def _card(worker: ManagedWorker, created: int) -> dict[str, Any]:
    return {
        "id": worker.spec.id,
        "object": "model",
        "created": created,
        "owned_by": "inferplane",
        "engine": worker.spec.engine,
        "version": worker.asset.version,
        "context_length": worker.info.get("context_size"),
    }


@router.get("/v1/models")
async def list_models(request: Request, principal: AnyKey) -> dict[str, Any]:
    svc = services(request)
    created = svc.started_at
    return {
        "object": "list",
        "data": [_card(w, created) for w in svc.supervisor.workers.values()],
    }


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request, principal: AnyKey) -> dict[str, Any]:
    svc = services(request)
    worker = svc.supervisor.workers.get(model_id)
    if worker is None:
        raise ModelNotFound(model_id)
    mark_served(request, worker)
    return _card(worker, svc.started_at)

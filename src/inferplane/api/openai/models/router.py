"""The models callers may use."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from inferplane.api.auth import AnyKey
from inferplane.api.openai.common import mark_served
from inferplane.api.services import services
from inferplane.engines.local.model import LocalModel
from inferplane.errors import ModelNotFound
from inferplane.routing.deployments import Alias

router = APIRouter()


def _card(model: LocalModel | Alias, created: int) -> dict[str, Any]:
    if isinstance(model, Alias):
        sizes = [d.context_size for d in model.deployments if d.context_size is not None]
        return {
            "id": model.id,
            "object": "model",
            "created": created,
            "owned_by": "inferplane",
            "engine": "router",
            "deployments": len(model.deployments),
            "context_length": max(sizes, default=None),
        }
    return {
        "id": model.id,
        "object": "model",
        "created": created,
        "owned_by": "inferplane",
        "engine": model.spec.engine,
        "version": model.version,
        "context_length": model.worker.info.get("context_size"),
    }


@router.get("/v1/models")
async def list_models(request: Request, principal: AnyKey) -> dict[str, Any]:
    svc = services(request)
    created = svc.started_at
    return {
        "object": "list",
        "data": [_card(m, created) for m in svc.inference.catalogue.visible(principal)],
    }


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request, principal: AnyKey) -> dict[str, Any]:
    svc = services(request)
    visible = {m.id: m for m in svc.inference.catalogue.visible(principal)}
    model = visible.get(model_id)
    if model is None:
        raise ModelNotFound(model_id)  # a model the key may not use is not revealed
    if isinstance(model, LocalModel):
        mark_served(request, model)
    return _card(model, svc.started_at)

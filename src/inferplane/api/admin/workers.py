"""/admin/v1/workers: the local model workers and their state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from inferplane.api.auth import AdminKey
from inferplane.api.services import services

router = APIRouter(prefix="/admin/v1")


@router.get("/workers")
async def list_workers(request: Request, principal: AdminKey) -> dict[str, Any]:
    workers = services(request).supervisor.workers.values()
    return {
        "object": "list",
        "data": [
            {
                "model": w.spec.id,
                "engine": w.spec.engine,
                "version": w.asset.version,
                "pid": w.pid,
                "ready": w.ready,
                "restarts": w.restarts,
                "info": w.info,
            }
            for w in workers
        ],
    }

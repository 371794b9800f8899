"""/admin/v1/deployments: every alias's deployments with their live routing state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from inferplane.api.auth import AdminKey
from inferplane.api.services import services

router = APIRouter(prefix="/admin/v1")


@router.get("/deployments")
async def list_deployments(request: Request, principal: AdminKey) -> dict[str, Any]:
    routes = services(request).inference.router
    return {
        "object": "list",
        "data": [
            {"model": alias.id, "strategy": alias.strategy, **dep.describe()}
            for alias, dep in routes.deployments()
        ],
    }

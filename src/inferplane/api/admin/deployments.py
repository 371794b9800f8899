"""/admin/v1/deployments: every alias's deployments with their live routing state, and
remote deployments added, changed and removed at run time.

A change is stored first (the provider key encrypted), then swapped into the routing
table; requests already running finish on the deployment they started on. Deployments
declared in the config file are read-only here (409): the file is their source.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field, ValidationError

from inferplane.api.auth import AdminKey
from inferplane.api.errors import parse_body, validation_error
from inferplane.api.services import Services, services
from inferplane.config.routes import Name, RemoteDeployment
from inferplane.errors import InferplaneError, InvalidRequest, NotFound
from inferplane.routing.store import RuntimeDeployment

router = APIRouter(prefix="/admin/v1")


class DeploymentCreate(RemoteDeployment):
    alias: Name  # the public model id it serves (created if new)
    api_key: Annotated[str, Field(min_length=1, max_length=4096)] | None = None


class Conflict(InferplaneError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


@router.get("/deployments")
async def list_deployments(request: Request, principal: AdminKey) -> dict[str, Any]:
    svc = services(request)
    runtime = svc.routes.runtime()
    return {
        "object": "list",
        "data": [
            {
                "model": alias.id,
                "strategy": alias.strategy,
                "source": "runtime" if dep.name in runtime else "config",
                **dep.describe(),
            }
            for alias, dep in svc.inference.router.deployments()
        ],
    }


@router.post("/deployments", status_code=201)
async def create_deployment(request: Request, principal: AdminKey) -> dict[str, Any]:
    body = await parse_body(request, DeploymentCreate)
    svc = services(request)
    if body.name in svc.routes.configured or body.name in svc.routes.runtime():
        raise Conflict(f"A deployment named '{body.name}' exists.", param="name")
    if body.alias in svc.inference.models and svc.inference.router.get(body.alias) is None:
        raise Conflict(f"'{body.alias}' is an embedding model.", param="alias")
    spec = RemoteDeployment.model_validate(body.model_dump(exclude={"alias", "api_key"}))
    await _change(
        svc, lambda: svc.deployments.put(RuntimeDeployment(body.alias, spec, body.api_key))
    )
    return _view(svc, body.name)


@router.patch("/deployments/{name}")
async def update_deployment(name: str, request: Request, principal: AdminKey) -> dict[str, Any]:
    svc = services(request)
    current = await _runtime(svc, name)
    try:
        changes = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise InvalidRequest("The body is not valid JSON.") from None
    if not isinstance(changes, dict):
        raise InvalidRequest("The body must be a JSON object.")
    if "name" in changes and changes["name"] != name:
        raise InvalidRequest("A deployment cannot be renamed.", param="name")
    merged = {
        **current.spec.model_dump(),
        "alias": current.alias,
        "api_key": current.api_key,
        **changes,
    }
    try:
        body = DeploymentCreate.model_validate(merged)
    except ValidationError as exc:
        raise validation_error(exc) from None
    spec = RemoteDeployment.model_validate(body.model_dump(exclude={"alias", "api_key"}))
    await _change(
        svc, lambda: svc.deployments.put(RuntimeDeployment(body.alias, spec, body.api_key))
    )
    return _view(svc, name)


@router.delete("/deployments/{name}", status_code=204)
async def delete_deployment(name: str, request: Request, principal: AdminKey) -> Response:
    svc = services(request)
    await _runtime(svc, name)
    await _change(svc, lambda: svc.deployments.delete(name))
    return Response(status_code=204)


def _runtime_of(body: DeploymentCreate) -> RuntimeDeployment:
    spec = RemoteDeployment.model_validate(body.model_dump(exclude={"alias", "api_key"}))
    return RuntimeDeployment(body.alias, spec, body.api_key)


async def _runtime(svc: Services, name: str) -> RuntimeDeployment:
    if name in svc.routes.configured:
        raise Conflict(
            f"The deployment '{name}' is declared in the config file; change it there.",
            param="name",
        )
    stored = {d.spec.name: d for d in await asyncio.to_thread(svc.deployments.all)}
    if name not in stored:
        raise NotFound(f"No deployment '{name}'.", param="name", code="deployment_not_found")
    return stored[name]


async def _change(svc: Services, action: Any) -> None:
    """Store, rebuild the routing table from the store, tell the other replicas."""

    def run() -> list[RuntimeDeployment]:
        action()
        return svc.deployments.all()

    svc.routes.apply(await asyncio.to_thread(run))
    if svc.notices is not None:
        await svc.notices.publish()


def _view(svc: Services, name: str) -> dict[str, Any]:
    alias, dep = next((a, d) for a, d in svc.inference.router.deployments() if d.name == name)
    return {"model": alias.id, "strategy": alias.strategy, "source": "runtime", **dep.describe()}

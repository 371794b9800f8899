"""/admin/v1/deployments: every alias's deployments with their live routing state, and
deployments added, changed and removed at run time.

A remote deployment names an endpoint (`engine: openai_compatible | anthropic`); a local
one is a llama.cpp worker declared like a model in the config file (`engine: llamacpp`,
`path` or `bundled`, `parallel`, ...), named with `name`. A change is stored first (a
provider key encrypted), then swapped into the routing table; a new local deployment's
worker has loaded its model before the answer (if it cannot, the change is undone and
the answer says why). Requests already running finish on the deployment they started on;
a removed local deployment's worker stops after its last request. Deployments declared in
the config file are read-only here (409): the file is their source.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, ValidationError

from inferplane.api.auth import AdminKey
from inferplane.api.errors import validation_error
from inferplane.api.services import Services, services
from inferplane.config import ModelSpec
from inferplane.config.policy import check_upstream
from inferplane.config.routes import REMOTE_ENGINES, Name, ProviderKey, RemoteDeployment
from inferplane.errors import Conflict, InvalidRequest, NotFound, StartFailed
from inferplane.routing.store import RuntimeDeployment

router = APIRouter(prefix="/admin/v1")
_ENGINES = (*REMOTE_ENGINES, "llamacpp")


class DeploymentCreate(RemoteDeployment):
    alias: Name  # the public model id it serves (created if new)
    api_key: ProviderKey | None = None


class _LocalHead(BaseModel):
    """What a local deployment's body holds besides its worker's model spec."""

    model_config = ConfigDict(extra="allow")
    alias: Name
    name: Name


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
    svc = services(request)
    item = _parse(svc, await _json_object(request))
    if item.name in svc.routes.configured or item.name in svc.routes.runtime():
        raise Conflict(f"A deployment named '{item.name}' exists.", param="name")
    _check_alias(svc, item.alias)
    await _change(svc, item.name, lambda: svc.deployments.put(item), undo=lambda: None)
    return _view(svc, item.name)


@router.patch("/deployments/{name}")
async def update_deployment(name: str, request: Request, principal: AdminKey) -> dict[str, Any]:
    svc = services(request)
    current = await _runtime(svc, name)
    changes = await _json_object(request)
    if changes.get("name", name) != name:
        raise InvalidRequest("A deployment cannot be renamed.", param="name")
    body = {**_body_of(current), **changes}
    if "base_url" in changes and "api_key" not in changes and "api_key" in body:
        # A stored provider key goes only to the server it was given for.
        body["api_key"] = None
    item = _parse(svc, body)
    _check_alias(svc, item.alias)
    await _change(
        svc,
        name,
        lambda: svc.deployments.put(item),
        undo=lambda: svc.deployments.put(current),
    )
    return _view(svc, name)


@router.delete("/deployments/{name}", status_code=204)
async def delete_deployment(name: str, request: Request, principal: AdminKey) -> Response:
    svc = services(request)
    if name in svc.routes.configured:
        raise _read_only(name)
    if not await asyncio.to_thread(svc.deployments.exists, name):
        raise _not_found(name)
    await _change(svc, None, lambda: svc.deployments.delete(name), undo=lambda: None)
    return Response(status_code=204)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise InvalidRequest("The body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.", code="invalid_json")
    return body


def _parse(svc: Services, body: dict[str, Any]) -> RuntimeDeployment:
    """A runtime deployment from a request body: remote, or a local llama.cpp worker,
    within the server's policy (upstream URL, region)."""
    item = _parse_body(body)
    policy = svc.settings.policy
    if isinstance(item.spec, RemoteDeployment):
        try:
            check_upstream(policy, item.spec.base_url)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="base_url", code="upstream_not_allowed") from None
    svc.policy.region(item.spec.region, param="region")
    return item


def _parse_body(body: dict[str, Any]) -> RuntimeDeployment:
    engine = body.get("engine")
    if engine not in _ENGINES:
        raise InvalidRequest(
            f"Invalid value for 'engine': expected one of {', '.join(_ENGINES)}.",
            param="engine",
        )
    try:
        if engine in REMOTE_ENGINES:
            remote = DeploymentCreate.model_validate(body)
            spec = RemoteDeployment.model_validate(remote.model_dump(exclude={"alias", "api_key"}))
            return RuntimeDeployment(remote.alias, spec, remote.api_key)
        for key in ("id", "listed", "api_key"):
            if key in body:
                raise InvalidRequest(f"'{key}' does not apply to a local deployment.", param=key)
        head = _LocalHead.model_validate(body)
        fields = {k: v for k, v in body.items() if k not in ("alias", "name")}
        local = ModelSpec.model_validate({**fields, "id": head.name, "listed": False})
        return RuntimeDeployment(head.alias, local)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _body_of(item: RuntimeDeployment) -> dict[str, Any]:
    """A stored deployment as the body that would create it (a PATCH applies onto it)."""
    if isinstance(item.spec, RemoteDeployment):
        return {**item.spec.model_dump(mode="json"), "alias": item.alias, "api_key": item.api_key}
    spec = item.spec.model_dump(mode="json", exclude={"id", "listed"})
    return {**spec, "name": item.spec.id, "alias": item.alias}


def _check_alias(svc: Services, alias: str) -> None:
    if alias in svc.inference.models and svc.inference.router.get(alias) is None:
        raise Conflict(f"'{alias}' is an embedding model.", param="alias")


def _read_only(name: str) -> Conflict:
    return Conflict(
        f"The deployment '{name}' is declared in the config file; change it there.",
        param="name",
    )


def _not_found(name: str) -> NotFound:
    return NotFound(f"No deployment '{name}'.", param="name", code="deployment_not_found")


async def _runtime(svc: Services, name: str) -> RuntimeDeployment:
    if name in svc.routes.configured:
        raise _read_only(name)
    stored = {d.name: d for d in await asyncio.to_thread(svc.deployments.all)}
    if name not in stored:
        raise _not_found(name)
    return stored[name]


async def _change(
    svc: Services, name: str | None, action: Callable[[], Any], undo: Callable[[], Any]
) -> None:
    """Store, rebuild the routing table from the store, tell the other replicas. When the
    changed deployment (`name`) could not start, store what was there before instead."""

    def run(step: Callable[[], Any]) -> list[RuntimeDeployment]:
        step()
        return svc.deployments.all()

    failed = await svc.routes.apply(await asyncio.to_thread(run, action))
    if name is not None and name in failed:

        def revert() -> None:
            svc.deployments.delete(name)
            undo()

        await svc.routes.apply(await asyncio.to_thread(run, revert))
        raise StartFailed(f"The deployment '{name}' could not start: {failed[name]}")
    if svc.notices is not None:
        await svc.notices.publish()


def _view(svc: Services, name: str) -> dict[str, Any]:
    alias, dep = next((a, d) for a, d in svc.inference.router.deployments() if d.name == name)
    return {"model": alias.id, "strategy": alias.strategy, "source": "runtime", **dep.describe()}

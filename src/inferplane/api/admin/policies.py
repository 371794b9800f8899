"""/admin/v1/policies: guardrail policies made, changed and removed at run time.

Every change is a new version of the policy, kept (`GET /admin/v1/policies/{id}/versions`);
responses name the version in force. A document that does not validate gets 400 naming
the field (`input[1].action`). Policies of the config file are read-only here (409): the
file is their source. A change is stored, then in force on this replica before the
answer, and on the others at their next change notice.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request

from inferplane.api.auth import AdminKey
from inferplane.api.services import services
from inferplane.errors import Conflict, InvalidRequest, NotFound
from inferplane.guardrails.policy import Policies, Policy, parse_policy

router = APIRouter(prefix="/admin/v1/policies")


def _view(policies: Policies, policy_id: str) -> dict[str, Any]:
    policy = policies.by_id.get(policy_id)
    if policy is None:
        raise NotFound(f"No guardrail policy '{policy_id}'.", param="id", code="policy_not_found")
    return {
        "id": policy_id,
        "version": policies.versions.get(policy_id, 1),
        "source": "api" if policy_id in policies.stored else "config",
        "policy": policy.model_dump(mode="json", exclude_none=True, by_alias=True),
    }


async def _document(request: Request, policy_id: str | None = None) -> Policy:
    try:
        document = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise InvalidRequest("The body must be a JSON policy document.") from None
    if policy_id is not None and isinstance(document, dict):
        document.setdefault("id", policy_id)
        if document["id"] != policy_id:
            raise InvalidRequest("The document's id differs from the path's.", param="id")
    return parse_policy(document)


async def _change(request: Request, policy_id: str, policy: Policy | None) -> int:
    svc = services(request)
    if policy_id in svc.guardrails.config_ids:
        raise Conflict(
            f"Policy '{policy_id}' is defined in the config file; change it there.", param="id"
        )
    version = await asyncio.to_thread(svc.policy_store.put, policy, policy_id)
    await svc.load_policies()
    if svc.notices is not None:
        await svc.notices.publish()
    return version


@router.post("", status_code=201)
async def create_policy(request: Request, principal: AdminKey) -> dict[str, Any]:
    policy = await _document(request)
    if policy.id in services(request).guardrails.by_id:
        raise Conflict(f"A guardrail policy '{policy.id}' exists; PUT changes it.", param="id")
    await _change(request, policy.id, policy)
    return _view(services(request).guardrails, policy.id)


@router.get("")
async def list_policies(request: Request, principal: AdminKey) -> dict[str, Any]:
    policies = services(request).guardrails
    return {"object": "list", "data": [_view(policies, i) for i in sorted(policies.by_id)]}


@router.get("/{policy_id}")
async def get_policy(policy_id: str, request: Request, principal: AdminKey) -> dict[str, Any]:
    return _view(services(request).guardrails, policy_id)


@router.get("/{policy_id}/versions")
async def policy_versions(policy_id: str, request: Request, principal: AdminKey) -> dict[str, Any]:
    svc = services(request)
    if policy_id in svc.guardrails.config_ids:  # the file's: one version, no history
        current = _view(svc.guardrails, policy_id)
        history = [{"version": 1, "created_at": None, "policy": current["policy"]}]
    else:
        history = await asyncio.to_thread(svc.policy_store.history, policy_id)
    if not history:
        raise NotFound(f"No guardrail policy '{policy_id}'.", param="id", code="policy_not_found")
    return {"object": "list", "data": history}


@router.put("/{policy_id}")
async def replace_policy(policy_id: str, request: Request, principal: AdminKey) -> dict[str, Any]:
    policy = await _document(request, policy_id)
    await _change(request, policy_id, policy)
    return _view(services(request).guardrails, policy_id)


@router.delete("/{policy_id}")
async def delete_policy(policy_id: str, request: Request, principal: AdminKey) -> dict[str, Any]:
    _view(services(request).guardrails, policy_id)  # 404 when there is none
    version = await _change(request, policy_id, None)
    return {"id": policy_id, "deleted": True, "version": version}

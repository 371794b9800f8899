"""/admin/v1/keys: create (secret shown once), get, list, update, revoke, rotate."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from inferplane.api.admin.common import After, Limit, apply_change, check_metadata, check_policy
from inferplane.api.auth import AdminKey
from inferplane.api.errors import parse_body
from inferplane.api.services import services
from inferplane.tenancy.schemas import KeyCreate, KeyRotate, KeyUpdate

router = APIRouter(prefix="/admin/v1/keys")


@router.post("", status_code=201)
async def create_key(request: Request, principal: AdminKey) -> dict[str, Any]:
    body = await parse_body(request, KeyCreate)
    check_metadata(request, body.metadata)
    check_policy(request, body.policy)
    return await apply_change(request, services(request).tenancy.store.create_key, body)


@router.get("")
async def list_keys(
    request: Request,
    principal: AdminKey,
    limit: Limit = 20,
    after: After = None,
    team_id: str | None = None,
) -> dict[str, Any]:
    store = services(request).tenancy.store
    return await asyncio.to_thread(store.list_keys, after, limit, team_id)


@router.get("/{key_id}")
async def get_key(key_id: str, request: Request, principal: AdminKey) -> dict[str, Any]:
    return await asyncio.to_thread(services(request).tenancy.store.get_key, key_id)


@router.patch("/{key_id}")
async def update_key(key_id: str, request: Request, principal: AdminKey) -> dict[str, Any]:
    body = await parse_body(request, KeyUpdate)
    check_metadata(request, body.metadata)
    check_policy(request, body.policy)
    return await apply_change(request, services(request).tenancy.store.update_key, key_id, body)


@router.delete("/{key_id}")
async def revoke_key(key_id: str, request: Request, principal: AdminKey) -> dict[str, Any]:
    return await apply_change(request, services(request).tenancy.store.revoke_key, key_id)


@router.post("/{key_id}/rotate")
async def rotate_key(key_id: str, request: Request, principal: AdminKey) -> dict[str, Any]:
    raw = await request.body()
    body = await parse_body(request, KeyRotate) if raw.strip() else KeyRotate()
    return await apply_change(request, services(request).tenancy.store.rotate_key, key_id, body)

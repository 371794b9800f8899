"""/admin/v1/orgs and /admin/v1/teams."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from inferplane.api.admin.common import After, Limit, apply_change, check_metadata, check_policy
from inferplane.api.auth import AdminKey
from inferplane.api.errors import parse_body
from inferplane.api.services import services
from inferplane.tenancy.schemas import OrgCreate, TeamCreate, TeamUpdate

router = APIRouter(prefix="/admin/v1")


@router.post("/orgs", status_code=201)
async def create_org(request: Request, principal: AdminKey) -> dict[str, Any]:
    body = await parse_body(request, OrgCreate)
    return await asyncio.to_thread(services(request).tenancy.store.create_org, body)


@router.get("/orgs")
async def list_orgs(
    request: Request, principal: AdminKey, limit: Limit = 20, after: After = None
) -> dict[str, Any]:
    return await asyncio.to_thread(services(request).tenancy.store.list_orgs, after, limit)


@router.get("/orgs/{org_id}")
async def get_org(org_id: str, request: Request, principal: AdminKey) -> dict[str, Any]:
    return await asyncio.to_thread(services(request).tenancy.store.get_org, org_id)


@router.post("/teams", status_code=201)
async def create_team(request: Request, principal: AdminKey) -> dict[str, Any]:
    body = await parse_body(request, TeamCreate)
    check_metadata(request, body.metadata)
    check_policy(request, body.policy)
    return await apply_change(request, services(request).tenancy.store.create_team, body)


@router.get("/teams")
async def list_teams(
    request: Request,
    principal: AdminKey,
    limit: Limit = 20,
    after: After = None,
    org_id: str | None = None,
) -> dict[str, Any]:
    store = services(request).tenancy.store
    return await asyncio.to_thread(store.list_teams, after, limit, org_id)


@router.get("/teams/{team_id}")
async def get_team(team_id: str, request: Request, principal: AdminKey) -> dict[str, Any]:
    return await asyncio.to_thread(services(request).tenancy.store.get_team, team_id)


@router.patch("/teams/{team_id}")
async def update_team(team_id: str, request: Request, principal: AdminKey) -> dict[str, Any]:
    body = await parse_body(request, TeamUpdate)
    check_metadata(request, body.metadata)
    check_policy(request, body.policy)
    return await apply_change(request, services(request).tenancy.store.update_team, team_id, body)

"""/admin/v1/keys: create (secret shown once), list, revoke."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from inferplane.api.auth import AdminKey
from inferplane.api.errors import parse_body
from inferplane.api.services import services

router = APIRouter(prefix="/admin/v1")


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=200)]
    scopes: list[Literal["admin"]] = []


@router.post("/keys", status_code=201)
async def create_key(request: Request, principal: AdminKey) -> dict[str, Any]:
    body = await parse_body(request, CreateKey)
    keys = services(request).keys
    return await asyncio.to_thread(keys.create, body.name, list(body.scopes))


@router.get("/keys")
async def list_keys(request: Request, principal: AdminKey) -> dict[str, Any]:
    keys = services(request).keys
    return {"object": "list", "data": await asyncio.to_thread(keys.list)}


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, request: Request, principal: AdminKey) -> dict[str, Any]:
    keys = services(request).keys
    return await asyncio.to_thread(keys.revoke, key_id)

"""/admin/v1/reviews: requests a guardrail `escalate` rule held for a person. The list
shows each one's excerpt (its values found masked), rule, key and time; a decision
approves (a waiting request goes on) or rejects it (it gets 400
`content_policy_violation` naming the review)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from inferplane.api.admin.common import After, Limit
from inferplane.api.auth import AdminKey
from inferplane.api.errors import parse_body
from inferplane.api.services import services
from inferplane.guardrails.reviews import APPROVED, REJECTED

router = APIRouter(prefix="/admin/v1/reviews")
Status = Literal["pending", "approved", "rejected", "expired"]


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    reason: Annotated[str, Field(max_length=2000)] | None = None


@router.get("")
async def list_reviews(
    request: Request,
    principal: AdminKey,
    status: Annotated[Status | None, Query()] = None,
    limit: Limit = 20,
    after: After = None,
) -> dict[str, Any]:
    return await asyncio.to_thread(services(request).reviews.list, status, after, limit)


@router.get("/{review_id}")
async def get_review(review_id: str, request: Request, principal: AdminKey) -> dict[str, Any]:
    return await asyncio.to_thread(services(request).reviews.get, review_id)


@router.post("/{review_id}")
async def decide_review(review_id: str, request: Request, principal: AdminKey) -> dict[str, Any]:
    body = await parse_body(request, Decision)
    status = APPROVED if body.decision == "approve" else REJECTED
    return await asyncio.to_thread(services(request).reviews.decide, review_id, status, body.reason)

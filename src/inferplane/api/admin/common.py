"""Shared by the admin routers: cursor pagination and snapshot-swapping changes.

Lists take `?limit=&after=` and answer `{"data": [...], "next": cursor-or-null}`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Query, Request

from inferplane.api.services import services
from inferplane.errors import InvalidRequest

Limit = Annotated[int, Query(ge=1, le=100)]
After = Annotated[str | None, Query(max_length=64)]
T = TypeVar("T")


def check_policy(request: Request, policy: str | None) -> None:
    """A guardrail policy attached to a key or team must exist (400 naming it)."""
    if policy is not None and policy not in services(request).guardrails.by_id:
        raise InvalidRequest(f"There is no guardrail policy '{policy}'.", param="policy")


def check_metadata(request: Request, metadata: dict[str, str] | None) -> None:
    """A `data_class` in key or team metadata must be in the policy's vocabulary (400
    naming it otherwise); it is stored normalized. A `policy` must exist."""
    if metadata is not None and "policy" in metadata:
        check_policy(request, metadata["policy"])
    if metadata is not None and "data_class" in metadata:
        policy = services(request).policy
        name = policy.data_class(metadata["data_class"], param="metadata.data_class")
        assert name is not None
        metadata["data_class"] = name


async def apply_change(request: Request, action: Callable[..., T], *args: Any) -> T:
    """Apply a change in the store, then swap in the new snapshot before answering."""
    svc = services(request)

    def run() -> T:
        result = action(*args)
        svc.tenancy.reload()
        return result

    result = await asyncio.to_thread(run)
    if svc.notices is not None:
        await svc.notices.publish()  # the other replicas rebuild their snapshots
    return result

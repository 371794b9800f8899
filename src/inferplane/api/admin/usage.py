"""/admin/v1/usage (JSON or CSV) and /admin/v1/pricing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from inferplane.api.auth import AdminKey
from inferplane.api.errors import parse_body
from inferplane.api.services import services
from inferplane.errors import InvalidRequest, NotFound
from inferplane.limits.pricing import Price
from inferplane.telemetry.usage import GROUPS, Granularity, query_usage, to_csv

router = APIRouter(prefix="/admin/v1")
Filter = Annotated[str | None, Query(max_length=256)]


@router.get("/usage", response_model=None)
async def usage(
    request: Request,
    principal: AdminKey,
    group_by: Annotated[str, Query(max_length=256)] = "",
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
    granularity: Granularity | None = None,
    org_id: Filter = None,
    team_id: Filter = None,
    key_id: Filter = None,
    model: Filter = None,
    user: Filter = None,
    format: Literal["json", "csv"] = "json",
) -> dict[str, Any] | Response:
    groups = [g.strip() for g in group_by.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise InvalidRequest(
            f"Cannot group by {', '.join(u[:32] for u in unknown[:5])}; "
            f"choose from {', '.join(GROUPS)}.",
            param="group_by",
        )
    repeated = sorted({g for g in groups if groups.count(g) > 1})
    if repeated:
        raise InvalidRequest(
            f"group_by names {', '.join(repeated)} more than once.", param="group_by"
        )
    for name, value in (("from", start), ("to", end)):
        if value is not None and not _representable(value):
            raise InvalidRequest(f"'{name}' is out of range.", param=name)
    filters = {
        k: v
        for k, v in {
            "org_id": org_id,
            "team_id": team_id,
            "key_id": key_id,
            "model": model,
            "user": user,
        }.items()
        if v is not None
    }
    svc = services(request)
    await svc.ledger.flush()  # include what was answered a moment ago
    engine = svc.tenancy.store.engine
    rows = await asyncio.to_thread(query_usage, engine, groups, start, end, granularity, filters)
    if format == "csv":
        return Response(to_csv(rows), media_type="text/csv")
    return {"object": "list", "data": rows, "next": None}


@router.get("/pricing")
async def list_prices(request: Request, principal: AdminKey) -> dict[str, Any]:
    book = services(request).prices
    return {"object": "list", "data": [v.view() for v in book.all()], "next": None}


@router.put("/pricing/{model:path}")
async def set_price(model: str, request: Request, principal: AdminKey) -> dict[str, Any]:
    svc = services(request)
    if model not in svc.inference.models and svc.inference.router.get(model) is None:
        raise NotFound(f"No model '{model}' is served.", param="model", code="model_not_found")
    price = await parse_body(request, Price)
    version = await asyncio.to_thread(svc.prices.set, model, price)
    if svc.notices is not None:
        await svc.notices.publish()
    return version.view()


def _representable(value: datetime) -> bool:
    """Whether the instant exists in UTC (0001-01-01T00:00+05:00 does not)."""
    if value.tzinfo is None:
        return True  # read as UTC
    try:
        value.astimezone(UTC)
    except OverflowError:
        return False
    return True

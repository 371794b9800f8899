"""/healthz (alive), /readyz (models loaded, store reachable), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from inferplane.api.services import services
from inferplane.store.database import reachable

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    svc = services(request)
    workers = {m: w.ready for m, w in svc.supervisor.workers.items()}
    store = await asyncio.to_thread(reachable, svc.tenancy.store.engine)
    ready = svc.accepting and store and all(workers.values())
    body = {"status": "ready" if ready else "not_ready", "models": workers, "store": store}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(services(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)

"""The services an app is built from, reached from a request through one typed accessor."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from fastapi import Request

from inferplane.config import Settings
from inferplane.engines.local.supervisor import Supervisor
from inferplane.limits.pricing import PriceBook
from inferplane.pipeline.service import InferenceService
from inferplane.routing.build import RouteTable
from inferplane.routing.policy import DataPolicy
from inferplane.routing.store import DeploymentStore
from inferplane.store.notices import ChangeNotices
from inferplane.telemetry.ledger import UsageLedger
from inferplane.telemetry.metrics import Metrics
from inferplane.tenancy.service import TenancyService


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    tenancy: TenancyService
    prices: PriceBook
    ledger: UsageLedger
    supervisor: Supervisor
    inference: InferenceService
    started_at: int
    routes: RouteTable
    deployments: DeploymentStore
    policy: DataPolicy
    installation_id: str  # sent upstream in x-inferplane-via; refused when it comes back
    notices: ChangeNotices | None = None
    redis: aioredis.Redis | None = None
    accepting: bool = True


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc

"""Budget alerts: a log line, a metric, and (optionally) a webhook POST, once per period."""

from __future__ import annotations

import asyncio
import logging

import httpx

from inferplane.limits.budgets import BudgetScope
from inferplane.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class BudgetAlerts:
    def __init__(self, metrics: Metrics, webhook_url: str | None):
        self._metrics = metrics
        self._url = webhook_url
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, scope: BudgetScope, spent_nusd: int) -> None:
        budget = scope.budget
        log.warning(
            "budget alert: %s spent $%.6f of $%g per %s (soft threshold %d%%)",
            scope.name,
            spent_nusd / 1e9,
            budget.usd,
            budget.period,
            budget.soft_pct,
        )
        self._metrics.budget_alerts.labels(scope.name.split(":", 1)[0]).inc()
        if self._url:
            payload = {
                "type": "budget.soft_threshold",
                "scope": scope.name,
                "spent_usd": spent_nusd / 1e9,
                "budget": budget.model_dump(),
            }
            task = asyncio.get_running_loop().create_task(self._post(payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _post(self, payload: dict[str, object]) -> None:
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                await client.post(str(self._url), json=payload)
        except httpx.HTTPError as exc:
            log.warning("budget alert webhook failed: %s", exc)

"""The app factory: `create_app(settings)` mounts routers; resources open in the lifespan.

Start-up, in order: store (migrations) -> keys snapshot and admin key -> model weights
(provisioned and fingerprinted) -> one worker per model, all loaded before serving.
Shutdown (after the server has stopped accepting and drained in-flight requests within
the grace period): refuse new work -> stop workers -> close the store.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from fastapi import FastAPI
from starlette.types import ASGIApp

from inferplane import __version__
from inferplane.api import health
from inferplane.api.admin import deployments as admin_deployments
from inferplane.api.admin import keys as admin_keys
from inferplane.api.admin import orgs as admin_orgs
from inferplane.api.admin import usage as admin_usage
from inferplane.api.admin import workers as admin_workers
from inferplane.api.data_plane import DataPlane
from inferplane.api.errors import install_error_handlers
from inferplane.api.middleware import GatewayMiddleware
from inferplane.api.openai.chat_completion.router import router as chat_router
from inferplane.api.openai.completion.router import router as completion_router
from inferplane.api.openai.embedding.router import router as embedding_router
from inferplane.api.openai.models.router import router as models_router
from inferplane.api.services import Services
from inferplane.cache.responses import Embedder, ResponseCache, Semantic
from inferplane.cache.semantic import SemanticIndex
from inferplane.cache.shared import SemanticFeed
from inferplane.cache.store import EntryStore, MemoryStore, RedisStore
from inferplane.config import Settings
from inferplane.engines.local.assets import provision
from inferplane.engines.local.model import LocalEmbedder, LocalModel, as_embedder, load_local_model
from inferplane.engines.local.supervisor import Supervisor
from inferplane.limits.budgets import Budgets, BudgetTracker
from inferplane.limits.memory import Limiter, MemoryLimiter
from inferplane.limits.pricing import PriceBook
from inferplane.limits.redis_budgets import RedisBudgets
from inferplane.limits.redis_limiter import RedisLimiter
from inferplane.pipeline.admission import Admitter
from inferplane.pipeline.service import InferenceService
from inferplane.routing.build import RouteTable
from inferplane.routing.policy import DataPolicy
from inferplane.routing.secrets import SecretBox
from inferplane.routing.store import DeploymentStore
from inferplane.store.database import open_database, sqlite_url
from inferplane.store.notices import ChangeNotices
from inferplane.telemetry.alerts import BudgetAlerts
from inferplane.telemetry.ledger import UsageLedger
from inferplane.telemetry.metrics import Metrics
from inferplane.tenancy.service import TenancyService
from inferplane.tenancy.store import TenancyStore

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> ASGIApp:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await _open(settings, metrics)
        app.state.services = services
        # What start-up built lives as long as the process: out of the collector's
        # sight, a full collection under load walks only what requests allocate
        # (measured: a 60 ms pause at 1000 req/s before, see the README).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            services.accepting = False
            if services.inference.cache is not None:  # its last stores, while workers run
                await services.inference.cache.aclose()
            await services.supervisor.stop()
            await services.inference.router.aclose()
            await services.ledger.close()  # flush every record of an answered request
            if services.notices is not None:
                await services.notices.stop()
            if services.redis is not None:
                await services.redis.aclose()
            services.tenancy.store.engine.dispose()

    # No trailing-slash redirects: Starlette builds their Location from the Host header.
    app = FastAPI(
        title="inferplane", version=__version__, lifespan=lifespan, redirect_slashes=False
    )
    install_error_handlers(app)
    for router in (
        chat_router,
        completion_router,
        embedding_router,
        models_router,
        admin_deployments.router,
        admin_keys.router,
        admin_orgs.router,
        admin_usage.router,
        admin_workers.router,
        health.router,
    ):
        app.include_router(router)
    # The gateway middleware sees every request; the data plane's hot routes skip
    # FastAPI's own stack (see `data_plane`).
    return GatewayMiddleware(
        DataPlane(app), metrics=metrics, max_body_bytes=settings.server.max_body_bytes
    )


async def _open(settings: Settings, metrics: Metrics) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.database_url or sqlite_url(settings.data_dir)
    engine = await asyncio.to_thread(open_database, url)
    alerts = BudgetAlerts(metrics, settings.server.alert_webhook_url)
    budgets = BudgetTracker(alert=alerts)
    tenancy = TenancyService(TenancyStore(engine), budgets)
    generated = await asyncio.to_thread(tenancy.store.ensure_admin_key, settings.admin_key)
    if generated is not None:
        _announce_admin_key(generated)
    prices = PriceBook(engine)
    await asyncio.to_thread(prices.load)
    priced = [(m.id, m.pricing) for m in settings.models]
    priced += [(a.id, a.pricing) for a in settings.aliases]
    for model_id, price in priced:
        if price is not None:
            await asyncio.to_thread(prices.set, model_id, price)
    ledger = UsageLedger(engine, settings.data_dir / "ledger")
    await ledger.start()  # replays a crash's journal first, so budgets see all spend
    await asyncio.to_thread(tenancy.reload)
    limiter: Limiter = MemoryLimiter()
    shared_budgets: Budgets = budgets
    notices, client = None, None
    # Filled once the routes exist; a change notice arriving before then has nothing to do.
    routes_ready: list[Any] = []
    if settings.redis_url:
        client = aioredis.from_url(
            settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        limiter = RedisLimiter(
            client,
            failure_mode=settings.server.redis_failure_mode,
            replicas=settings.server.replicas,
        )
        shared_budgets = RedisBudgets(
            client, budgets, alerts, failure_mode=settings.server.redis_failure_mode
        )

        async def on_change() -> None:
            await asyncio.to_thread(tenancy.reload)
            await asyncio.to_thread(prices.load)
            if routes_ready:
                await routes_ready[0].apply(await asyncio.to_thread(routes_ready[1].all))

        notices = ChangeNotices(client, on_change)
        await notices.start()
    supervisor = Supervisor(settings.server, metrics)
    models = {}
    for spec in settings.models:
        asset = await asyncio.to_thread(provision, spec, settings.data_dir)
        worker = supervisor.add(spec, asset)
        models[spec.id] = await asyncio.to_thread(load_local_model, spec, asset, worker, metrics)
    await supervisor.start()
    box = await asyncio.to_thread(SecretBox.open, settings.data_dir, settings.secret_key)
    routes = RouteTable(settings, models, metrics, supervisor, installation_id=box.installation_id)
    deployments = DeploymentStore(engine, box)
    await routes.apply(await asyncio.to_thread(deployments.all))
    routes.router.start_health_checks(settings.server.health_interval_s)
    routes_ready.extend([routes, deployments])
    cache = _response_cache(settings, metrics, client, models)
    if cache is not None:
        cache.start()
    policy = DataPolicy(settings.policy)
    return Services(
        settings=settings,
        metrics=metrics,
        tenancy=tenancy,
        supervisor=supervisor,
        prices=prices,
        ledger=ledger,
        inference=InferenceService(
            models,
            routes.router,
            Admitter(limiter, shared_budgets, prices, ledger),
            ledger,
            metrics,
            cache,
            policy,
        ),
        routes=routes,
        deployments=deployments,
        policy=policy,
        installation_id=box.installation_id,
        notices=notices,
        redis=client,
        started_at=int(time.time()),
    )


def _response_cache(
    settings: Settings,
    metrics: Metrics,
    redis: aioredis.Redis | None,
    models: dict[str, LocalModel],
) -> ResponseCache | None:
    cfg = settings.cache
    if cfg is None:
        return None
    store: EntryStore = MemoryStore(cfg.max_bytes)
    if cfg.backend == "redis":
        assert redis is not None  # the settings checked INFERPLANE_REDIS_URL
        store = RedisStore(redis)
    semantic = None
    if cfg.semantic is not None:
        embedder = as_embedder(models[cfg.semantic.embedding_model])
        index = SemanticIndex(cfg.semantic.max_bytes)
        # With the Redis store, replicas share their semantic entries too.
        feed = SemanticFeed(redis, index) if cfg.backend == "redis" and redis else None
        semantic = Semantic(index, _embed_with(embedder), cfg.semantic.threshold, feed)
    return ResponseCache(
        store,
        metrics,
        mode=cfg.mode,
        scope=cfg.scope,
        ttl_s=cfg.ttl_s,
        hit_cost_fraction=cfg.hit_cost_fraction,
        semantic=semantic,
    )


def _embed_with(model: LocalEmbedder) -> Embedder:
    """The semantic cache's embedding call (an internal request: not rate-limited or
    billed to the caller)."""

    async def embed(text: str) -> np.ndarray:
        vector: np.ndarray = (await model.vectors([text]))[0]
        return vector

    return embed


def _announce_admin_key(secret: str) -> None:
    # Printed once, to the terminal only (never to the log); the store keeps only a hash.
    print(
        "\n  inferplane generated an admin key. It is shown once and stored only as a hash:\n"
        f"\n    {secret}\n\n"
        "  Set INFERPLANE_ADMIN_KEY to choose your own.\n",
        file=sys.stdout,
        flush=True,
    )

"""The runtime: everything a server is built from, opened and closed in numbered, timed steps.

Start-up, in order (each step logged at INFO, e.g. `start-up 6/9 model workers: 2.41 s`):

    1. store and migrations
    2. keys snapshot and admin key (generated and printed once when none is set)
    3. prices
    4. usage ledger: replays a crash's journal first, so budgets see all spend
    5. limits and budgets (+ Redis and its change notices when configured)
    6. model assets and workers, all loaded before serving
    7. routes and health checks (runtime deployments from the store on top)
    8. response cache
    9. services

Shutdown, `aclose()`, after the server has stopped accepting connections and drained
its in-flight requests (uvicorn, within the same grace), in order:

    1. refuse new work
    2. the response cache's last stores, while the workers still run
    3. stop the workers
    4. the router: replaced deployments finish draining, health checks stop
    5. flush the usage ledger: every record of an answered request
    6. stop listening for change notices
    7. close the Redis client
    8. dispose of the store's connections

The whole shutdown is bounded by `server.shutdown_grace_s`: each step may use what is
left of it, and one that overruns is cancelled and logged so the next one runs. Stopping
the workers and flushing the ledger get a floor beyond it (a zero grace must not orphan
worker processes); a failing step is logged, and the next one runs.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable

import numpy as np
import redis.asyncio as aioredis
from sqlalchemy import Engine

from inferplane.cache.responses import Embedder, ResponseCache, Semantic
from inferplane.cache.semantic import SemanticIndex
from inferplane.cache.shared import SemanticFeed
from inferplane.cache.store import EntryStore, MemoryStore, RedisStore
from inferplane.config import Settings
from inferplane.engines.local.assets import provision
from inferplane.engines.local.model import (
    LocalEmbedder,
    LocalModel,
    as_embedder,
    load_local_model,
)
from inferplane.engines.local.supervisor import Supervisor
from inferplane.guardrails.policy import Policies, configured
from inferplane.guardrails.reviews import ReviewStore
from inferplane.guardrails.store import PolicyStore
from inferplane.limits.budgets import Budgets, BudgetTracker
from inferplane.limits.memory import Limiter, MemoryLimiter
from inferplane.limits.pricing import PriceBook
from inferplane.limits.redis_budgets import RedisBudgets
from inferplane.limits.redis_limiter import RedisLimiter
from inferplane.pipeline.admission import Admitter
from inferplane.pipeline.guarding import GuardInput, GuardOutput
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

Step = Callable[[], Awaitable[None]]
# ManagedWorker.stop waits 5 s for a worker to exit, 5 s after SIGTERM, then SIGKILLs it
# and waits 5 s more: the floor lets that run to the end even when the grace is spent.
_WORKERS_FLOOR_S = 16.0
# The ledger's journal survives a cut-short flush (replayed at the next start), but until
# then other replicas' budgets would not see the spend: a few seconds to store it.
_LEDGER_FLOOR_S = 5.0


class Runtime:
    """Owns everything a server is built from. `await Runtime.open(settings, metrics)`
    opens it in steps, `await runtime.aclose()` closes it; the routes reach its parts
    through `api.services.services(request)`."""

    # Filled in by the start-up steps, in this order.
    engine: Engine
    alerts: BudgetAlerts
    budgets: BudgetTracker
    tenancy: TenancyService
    prices: PriceBook
    ledger: UsageLedger
    limiter: Limiter
    shared_budgets: Budgets
    supervisor: Supervisor
    models: dict[str, LocalModel]
    installation_id: str  # sent upstream in x-inferplane-via; refused when it comes back
    routes: RouteTable
    deployments: DeploymentStore
    cache: ResponseCache | None
    policy: DataPolicy
    guardrails: Policies  # guardrail policies in force
    policy_store: PolicyStore
    reviews: ReviewStore  # requests held for a person's review
    inference: InferenceService
    started_at: int

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.notices: ChangeNotices | None = None
        self.redis: aioredis.Redis | None = None
        self.accepting = True
        self._routed = False  # a change notice before the routes exist has nothing to do
        self._guarded = False  # nor one before the guardrail policies are read

    @classmethod
    async def open(cls, settings: Settings, metrics: Metrics) -> Runtime:
        runtime = cls(settings, metrics)
        steps: list[tuple[str, Step]] = [
            ("store and migrations", runtime._open_store),
            ("keys snapshot and admin key", runtime._open_keys),
            ("prices", runtime._open_prices),
            ("usage ledger", runtime._open_ledger),
            ("limits and budgets", runtime._open_limits),
            ("model workers", runtime._open_workers),
            ("routes and health checks", runtime._open_routes),
            ("response cache", runtime._open_cache),
            ("services", runtime._open_services),
        ]
        for number, (name, step) in enumerate(steps, 1):
            started = time.perf_counter()
            await step()
            took = time.perf_counter() - started
            log.info("start-up %d/%d %s: %.2f s", number, len(steps), name, took)
        return runtime

    async def aclose(self) -> None:
        """Close everything, in order, within `server.shutdown_grace_s` (see the module
        docstring); returns once every step has ended or been cut short."""
        steps: list[tuple[str, Step, float]] = [
            ("refuse new work", self._refuse, 0.0),
            ("response cache's last stores", self._close_cache, 0.0),
            ("workers", self.supervisor.stop, _WORKERS_FLOOR_S),
            ("router and draining deployments", self.routes.aclose, 0.0),
            ("usage ledger flush", self.ledger.close, _LEDGER_FLOOR_S),
            ("change notices", self._close_notices, 0.0),
            ("redis", self._close_redis, 0.0),
            ("store", self._close_store, 0.0),
        ]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.server.shutdown_grace_s
        for number, (name, step, floor_s) in enumerate(steps, 1):
            where = f"shutdown {number}/{len(steps)} {name}"
            started = loop.time()
            timer = asyncio.timeout_at(max(deadline, started + floor_s))
            try:
                async with timer:
                    await step()
            except Exception:
                if not timer.expired():
                    log.exception("%s failed; going on", where)
                    continue
            took = loop.time() - started
            if timer.expired():
                log.warning("%s: overran the shutdown grace, cancelled after %.2f s", where, took)
            else:
                log.info("%s: %.2f s", where, took)

    # --- start-up steps --------------------------------------------------------------

    async def _open_store(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = settings.database_url or sqlite_url(settings.data_dir)
        self.engine = await asyncio.to_thread(open_database, url)

    async def _open_keys(self) -> None:
        self.alerts = BudgetAlerts(self.metrics, self.settings.server.alert_webhook_url)
        self.budgets = BudgetTracker(alert=self.alerts)
        self.tenancy = TenancyService(TenancyStore(self.engine), self.budgets)
        store = self.tenancy.store
        generated = await asyncio.to_thread(store.ensure_admin_key, self.settings.admin_key)
        if generated is not None:
            _announce_admin_key(generated)

    async def _open_prices(self) -> None:
        self.prices = PriceBook(self.engine)
        await asyncio.to_thread(self.prices.load)
        priced = [(m.id, m.pricing) for m in self.settings.models]
        priced += [(a.id, a.pricing) for a in self.settings.aliases]
        for model_id, price in priced:
            if price is not None:
                await asyncio.to_thread(self.prices.set, model_id, price)

    async def _open_ledger(self) -> None:
        self.ledger = UsageLedger(self.engine, self.settings.data_dir / "ledger")
        await self.ledger.start()  # replays a crash's journal first, so budgets see all spend
        await asyncio.to_thread(self.tenancy.reload)

    async def _open_limits(self) -> None:
        self.limiter = MemoryLimiter()
        self.shared_budgets = self.budgets
        settings = self.settings
        if not settings.redis_url:
            return
        client = aioredis.from_url(
            settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        self.redis = client
        mode = settings.server.redis_failure_mode
        self.limiter = RedisLimiter(client, failure_mode=mode, replicas=settings.server.replicas)
        self.shared_budgets = RedisBudgets(client, self.budgets, self.alerts, failure_mode=mode)
        self.notices = ChangeNotices(client, self._on_change)
        await self.notices.start()

    async def load_policies(self) -> None:
        """The guardrail policies in force: the config file's and the admin API's."""
        stored = await asyncio.to_thread(self.policy_store.current)
        self.guardrails = self._config_policies.with_stored(stored)

    async def _on_change(self) -> None:
        """Another replica changed the control plane: rebuild this one's snapshots."""
        await asyncio.to_thread(self.tenancy.reload)
        if self._guarded:
            await self.load_policies()
        await asyncio.to_thread(self.prices.load)
        if self._routed:
            await self.routes.apply(await asyncio.to_thread(self.deployments.all))

    async def _open_workers(self) -> None:
        self.supervisor = Supervisor(self.settings.server, self.metrics)
        self.models = {}
        for spec in self.settings.models:
            asset = await asyncio.to_thread(provision, spec, self.settings.data_dir)
            worker = self.supervisor.add(spec, asset)
            self.models[spec.id] = await asyncio.to_thread(
                load_local_model, spec, asset, worker, self.metrics
            )
        await self.supervisor.start()

    async def _open_routes(self) -> None:
        settings = self.settings
        box = await asyncio.to_thread(SecretBox.open, settings.data_dir, settings.secret_key)
        self.installation_id = box.installation_id
        self.routes = RouteTable(
            settings,
            self.models,
            self.metrics,
            self.supervisor,
            installation_id=box.installation_id,
        )
        self.deployments = DeploymentStore(self.engine, box)
        await self.routes.apply(await asyncio.to_thread(self.deployments.all))
        self.routes.router.start_health_checks(settings.server.health_interval_s)
        self._routed = True

    async def _open_cache(self) -> None:
        self.cache = _response_cache(self.settings, self.metrics, self.redis, self.models)
        if self.cache is not None:
            self.cache.start()

    async def _open_services(self) -> None:
        self.policy = DataPolicy(self.settings.policy)
        admitter = Admitter(self.limiter, self.shared_budgets, self.prices, self.ledger)
        self.policy_store = PolicyStore(self.engine)
        self._config_policies = configured(self.settings)
        await self.load_policies()
        self._guarded = True
        reviews = ReviewStore(self.engine)
        guard_in = GuardInput(lambda: self.guardrails, self.metrics, self.routes.router, reviews)
        self.reviews = reviews
        guard_out = GuardOutput(lambda: self.guardrails, self.metrics)
        self.inference = InferenceService(
            self.models,
            self.routes.router,
            admitter,
            self.ledger,
            self.metrics,
            self.cache,
            self.policy,
            inputs=(guard_in,),
            outputs=(guard_out,),
        )
        self.started_at = int(time.time())

    # --- shutdown steps --------------------------------------------------------------

    async def _refuse(self) -> None:
        self.accepting = False

    async def _close_cache(self) -> None:
        if self.cache is not None:
            await self.cache.aclose()

    async def _close_notices(self) -> None:
        if self.notices is not None:
            await self.notices.stop()

    async def _close_redis(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    async def _close_store(self) -> None:
        self.engine.dispose()


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

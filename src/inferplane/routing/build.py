"""Build the routing table from the settings, the loaded local models and the remote
deployments added at run time; rebuild it when those change."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
from collections.abc import Coroutine
from typing import Any

from inferplane.config import ModelSpec, Settings
from inferplane.config.policy import peer_allowed
from inferplane.config.routes import AliasSpec, RemoteDeployment, Routing
from inferplane.engines.local.assets import AssetError, provision
from inferplane.engines.local.model import LocalModel, as_embedder, load_local_model
from inferplane.engines.local.supervisor import ManagedWorker, Supervisor, WorkerStartError
from inferplane.engines.remote.anthropic import AnthropicEngine
from inferplane.engines.remote.base import RemoteEngine
from inferplane.engines.remote.openai_compatible import OpenAICompatibleEngine
from inferplane.engines.remote.upstream_http import Egress
from inferplane.routing.breaker import CircuitBreaker
from inferplane.routing.complexity import DEFAULT_LARGE, DEFAULT_SMALL, ComplexityClassifier
from inferplane.routing.deployments import Alias, Deployment, alias_from_spec
from inferplane.routing.router import Router
from inferplane.routing.store import RuntimeDeployment
from inferplane.telemetry.metrics import Metrics

log = logging.getLogger(__name__)
_DRAIN_S = 600.0  # how long a replaced deployment may finish its in-flight requests


class RouteTable:
    """Owns the router's aliases: the config's, plus runtime deployments on top."""

    def __init__(
        self,
        settings: Settings,
        models: dict[str, LocalModel],
        metrics: Metrics,
        supervisor: Supervisor,
        env: dict[str, str] | None = None,
        installation_id: str = "",
    ):
        self._metrics = metrics
        # Every upstream request says it came through this installation (a request that
        # comes back is refused: loop protection), and goes only where the policy allows.
        policy = settings.policy
        self._egress = Egress(
            headers={"x-inferplane-via": installation_id} if installation_id else {},
            allowed=lambda address: peer_allowed(policy, address),
        )
        self._supervisor = supervisor
        self._data_dir = settings.data_dir
        self._env = dict(os.environ) if env is None else env
        self._specs = {a.id: a for a in settings.aliases}
        self._base: dict[str, Alias] = {}
        self.configured: set[str] = set()  # deployment names from the config file
        for model in models.values():
            if model.spec.listed and model.is_llm:
                # A plain local model: one deployment, whose worker restarts on failure
                # (requests wait for it), so its breaker never opens.
                never = self._breaker(model.deployment, 1 << 30, 1.0)
                dep = Deployment(model.deployment, model.spec, never, model)
                self._base[model.id] = Alias(model.id, [dep], limits=model.spec.limits)
        for spec in settings.aliases:
            deployments = []
            for d in spec.deployments:
                if isinstance(d, dict):
                    local = models[str(d["name"])]
                    cut = self._breaker(local.id, spec.breaker_failures, spec.breaker_cooldown_s)
                    deployments.append(Deployment(local.id, local.spec, cut, local))
                else:
                    key = self._env.get(d.api_key_env) if d.api_key_env else None
                    deployments.append(self._remote(spec, d, key))
            self._base[spec.id] = alias_from_spec(spec, deployments, _classifier(spec, models))
        self.configured = {d.name for a in self._base.values() for d in a.deployments}
        self._runtime: dict[str, tuple[str, Deployment]] = {}  # name -> (fingerprint, dep)
        # Runtime local deployments' workers: name -> (worker fingerprint, model).
        self._workers: dict[str, tuple[str, LocalModel]] = {}
        self._draining: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self.router = Router(dict(self._base))

    async def apply(self, runtime: list[RuntimeDeployment]) -> dict[str, str]:
        """Swap in the aliases with these runtime deployments. Requests in flight keep
        the deployments they were planned with; a removed or changed one is closed (a
        local one's worker stopped) once its last request ends. A new local deployment's
        worker is started before the swap; one that fails to start is left out, and its
        name maps to the reason in the result."""
        async with self._lock:
            return await self._apply(runtime)

    async def _apply(self, runtime: list[RuntimeDeployment]) -> dict[str, str]:
        kept: dict[str, tuple[str, Deployment]] = {}
        workers: dict[str, tuple[str, LocalModel]] = {}
        extra: dict[str, list[Deployment]] = {}
        failed: dict[str, str] = {}
        for item in runtime:
            fingerprint = _fingerprint(item)
            old = self._runtime.get(item.name)
            spec = self._specs.get(item.alias) or _defaults(item.alias)
            if old is not None and old[0] == fingerprint:
                dep = old[1]
            elif isinstance(item.spec, RemoteDeployment):
                key = item.api_key
                if key is None and item.spec.api_key_env:
                    key = self._env.get(item.spec.api_key_env)
                dep = self._remote(spec, item.spec, key)
            else:
                try:
                    local = await self._worker_for(item.spec)
                except WorkerStartError as exc:
                    log.error("deployment %s is left out: %s", item.name, exc)
                    failed[item.name] = str(exc)
                    continue
                cut = self._breaker(item.name, spec.breaker_failures, spec.breaker_cooldown_s)
                dep = Deployment(item.name, item.spec, cut, local)
            if isinstance(dep.engine, LocalModel):
                workers[item.name] = (_worker_fingerprint(dep.engine.spec), dep.engine)
            kept[item.name] = (fingerprint, dep)
            extra.setdefault(item.alias, []).append(dep)
        still = {id(dep) for _, dep in kept.values()}
        retired = [dep for _, dep in self._runtime.values() if id(dep) not in still]
        running = {id(local) for _, local in workers.values()}
        stopped = {id(m) for _, m in self._workers.values()} - running
        self._runtime, self._workers = kept, workers
        aliases = dict(self._base)
        for alias_id, deps in extra.items():
            base = aliases.get(alias_id)
            if base is None:
                spec = self._specs.get(alias_id) or _defaults(alias_id)
                aliases[alias_id] = alias_from_spec(spec, deps)
            else:
                aliases[alias_id] = dataclasses.replace(base, deployments=base.deployments + deps)
        self.router.aliases = aliases  # one assignment: readers see the old or the new
        for dep in retired:
            # A local deployment whose worker lives on (only its routing changed) is not
            # stopped: its replacement holds the same worker.
            engine = dep.engine
            own = isinstance(engine, LocalModel) and id(engine) in stopped
            worker = engine.worker if isinstance(engine, LocalModel) and own else None
            self._background(_drain_and_close(dep, worker, self._supervisor))
        return failed

    async def _worker_for(self, spec: ModelSpec) -> LocalModel:
        """The running worker for this local deployment spec, or a new one when the
        worker's own settings changed (routing attributes alone reuse it)."""
        have = self._workers.get(spec.id)
        if have is not None and have[0] == _worker_fingerprint(spec):
            return have[1]
        try:
            asset = await asyncio.to_thread(provision, spec, self._data_dir)
            worker = await self._supervisor.start_one(spec, asset)
        except (AssetError, OSError) as exc:
            raise WorkerStartError(str(exc)) from exc
        try:
            return await asyncio.to_thread(load_local_model, spec, asset, worker, self._metrics)
        except Exception as exc:
            await self._supervisor.remove(worker)
            raise WorkerStartError(f"cannot load the tokenizer of '{spec.id}': {exc}") from exc

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def aclose(self) -> None:
        """Wait until every replaced deployment has finished its requests and closed,
        then stop the router. Cancelled (the caller's grace has run out), it cancels the
        drains still waiting and stops the router all the same."""
        try:
            while self._draining:  # a change applied meanwhile may retire more
                for outcome in await asyncio.gather(*self._draining, return_exceptions=True):
                    if isinstance(outcome, Exception):
                        log.error("closing a replaced deployment failed: %r", outcome)
        finally:
            # A cancelled gather has cancelled the drains it waited for.
            await self.router.aclose()

    def runtime(self) -> set[str]:
        """Names of the deployments added at run time."""
        return set(self._runtime)

    def _remote(self, spec: AliasSpec, d: RemoteDeployment, key: str | None) -> Deployment:
        engine: RemoteEngine
        if d.engine == "anthropic":
            engine = AnthropicEngine(d, key, spec.default_max_tokens, self._egress)
        else:
            engine = OpenAICompatibleEngine(d, key, self._egress)
        engine.default_max_tokens = spec.default_max_tokens
        cut = self._breaker(d.name, spec.breaker_failures, spec.breaker_cooldown_s)
        return Deployment(d.name, d, cut, engine)

    def _breaker(self, name: str, failures: int, cooldown_s: float) -> CircuitBreaker:
        healthy = self._metrics.deployment_healthy.labels(name)
        healthy.set(1)

        def changed(_old: str, new: str) -> None:
            self._metrics.breaker_transitions.labels(name, new).inc()
            healthy.set(0 if new == "open" else 1)

        return CircuitBreaker(failures, cooldown_s, on_change=changed)


def _defaults(alias_id: str) -> AliasSpec:
    """An alias created by a runtime deployment: the default routing settings."""
    return AliasSpec.model_construct(id=alias_id, deployments=[])


_NOT_WORKER = set(Routing.model_fields) | {"limits", "pricing", "listed"}


def _classifier(spec: AliasSpec, models: dict[str, LocalModel]) -> ComplexityClassifier | None:
    cfg = spec.complexity_classifier
    if cfg is None:
        return None
    return ComplexityClassifier(
        as_embedder(models[cfg.embedding_model]).vectors,
        cfg.large or DEFAULT_LARGE,
        cfg.small or DEFAULT_SMALL,
        margin=cfg.margin,
    )


def _fingerprint(item: RuntimeDeployment) -> str:
    key = hashlib.sha256((item.api_key or "").encode()).hexdigest()
    return f"{item.alias}|{item.spec.model_dump_json()}|{key}"


def _worker_fingerprint(spec: ModelSpec) -> str:
    """What a local deployment's worker is started with (not how requests are routed)."""
    return spec.model_dump_json(exclude=_NOT_WORKER)


async def _drain_and_close(
    dep: Deployment, worker: ManagedWorker | None, supervisor: Supervisor
) -> None:
    for _ in range(int(_DRAIN_S / 0.5)):
        if not dep.in_flight:
            break
        await asyncio.sleep(0.5)
    await dep.engine.aclose()
    if worker is not None:
        await supervisor.remove(worker)

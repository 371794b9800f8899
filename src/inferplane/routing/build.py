"""Build the routing table from the settings, the loaded local models and the remote
deployments added at run time; rebuild it when those change."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os

from inferplane.config import Settings
from inferplane.config.routes import AliasSpec, RemoteDeployment
from inferplane.engines.anthropic import AnthropicEngine
from inferplane.engines.local import LocalModel
from inferplane.engines.openai_compatible import OpenAICompatibleEngine
from inferplane.routing.breaker import CircuitBreaker
from inferplane.routing.deployments import Alias, Deployment, RemoteEngine, alias_from_spec
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
        env: dict[str, str] | None = None,
    ):
        self._metrics = metrics
        self._env = dict(os.environ) if env is None else env
        self._specs = {a.id: a for a in settings.aliases}
        self._base: dict[str, Alias] = {}
        self.configured: set[str] = set()  # deployment names from the config file
        for model in models.values():
            if model.spec.listed and model.kind == "llm":
                # A plain local model: one deployment, whose worker restarts on failure
                # (requests wait for it), so its breaker never opens.
                never = self._breaker(model.deployment, 1 << 30, 1.0)
                dep = Deployment(model.deployment, model.spec, never, local=model)
                self._base[model.id] = Alias(model.id, [dep], limits=model.spec.limits)
        for spec in settings.aliases:
            deployments = []
            for d in spec.deployments:
                if isinstance(d, dict):
                    local = models[str(d["name"])]
                    cut = self._breaker(local.id, spec.breaker_failures, spec.breaker_cooldown_s)
                    deployments.append(Deployment(local.id, local.spec, cut, local=local))
                else:
                    key = self._env.get(d.api_key_env) if d.api_key_env else None
                    deployments.append(self._remote(spec, d, key))
            self._base[spec.id] = alias_from_spec(spec, deployments)
        self.configured = {d.name for a in self._base.values() for d in a.deployments}
        self._runtime: dict[str, tuple[str, Deployment]] = {}  # name -> (fingerprint, dep)
        self._draining: set[asyncio.Task[None]] = set()
        self.router = Router(dict(self._base))

    def apply(self, runtime: list[RuntimeDeployment]) -> None:
        """Swap in the aliases with these runtime deployments. Requests in flight keep
        the deployments they were planned with; a removed or changed one is closed once
        its last request ends."""
        kept: dict[str, tuple[str, Deployment]] = {}
        extra: dict[str, list[Deployment]] = {}
        for item in runtime:
            fingerprint = _fingerprint(item)
            old = self._runtime.get(item.spec.name)
            if old is not None and old[0] == fingerprint:
                dep = old[1]
            else:
                spec = self._specs.get(item.alias) or _defaults(item.alias)
                key = item.api_key
                if key is None and item.spec.api_key_env:
                    key = self._env.get(item.spec.api_key_env)
                dep = self._remote(spec, item.spec, key)
            kept[item.spec.name] = (fingerprint, dep)
            extra.setdefault(item.alias, []).append(dep)
        still = {id(dep) for _, dep in kept.values()}
        retired = [dep for _, dep in self._runtime.values() if id(dep) not in still]
        self._runtime = kept
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
            task = asyncio.get_running_loop().create_task(_drain_and_close(dep))
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)

    def runtime(self) -> set[str]:
        """Names of the deployments added at run time."""
        return set(self._runtime)

    def _remote(self, spec: AliasSpec, d: RemoteDeployment, key: str | None) -> Deployment:
        engine: RemoteEngine
        if d.engine == "anthropic":
            engine = AnthropicEngine(d, key, spec.default_max_tokens)
        else:
            engine = OpenAICompatibleEngine(d, key)
        cut = self._breaker(d.name, spec.breaker_failures, spec.breaker_cooldown_s)
        return Deployment(d.name, d, cut, remote=engine)

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


def _fingerprint(item: RuntimeDeployment) -> str:
    key = hashlib.sha256((item.api_key or "").encode()).hexdigest()
    return f"{item.alias}|{item.spec.model_dump_json()}|{key}"


async def _drain_and_close(dep: Deployment) -> None:
    for _ in range(int(_DRAIN_S / 0.5)):
        if not dep.in_flight:
            break
        await asyncio.sleep(0.5)
    if dep.remote is not None:
        await dep.remote.aclose()

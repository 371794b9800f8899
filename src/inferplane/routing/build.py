"""Build the routing table from the settings and the loaded local models."""

from __future__ import annotations

import os

from inferplane.config import Settings
from inferplane.engines.anthropic import AnthropicEngine
from inferplane.engines.local import LocalModel
from inferplane.engines.openai_compatible import OpenAICompatibleEngine
from inferplane.routing.breaker import CircuitBreaker
from inferplane.routing.deployments import Alias, Deployment, RemoteEngine, alias_from_spec
from inferplane.routing.router import Router
from inferplane.telemetry.metrics import Metrics


def build_router(
    settings: Settings,
    models: dict[str, LocalModel],
    metrics: Metrics,
    env: dict[str, str] | None = None,
) -> Router:
    env = dict(os.environ) if env is None else env

    def breaker(name: str, failures: int, cooldown_s: float) -> CircuitBreaker:
        healthy = metrics.deployment_healthy.labels(name)
        healthy.set(1)

        def changed(_old: str, new: str) -> None:
            metrics.breaker_transitions.labels(name, new).inc()
            healthy.set(0 if new == "open" else 1)

        return CircuitBreaker(failures, cooldown_s, on_change=changed)

    aliases: dict[str, Alias] = {}
    for model in models.values():
        if model.spec.listed and model.kind == "llm":
            # A plain local model: one deployment, whose worker restarts on failure
            # (requests wait for it), so its breaker never opens.
            dep = Deployment(
                model.deployment, model.spec, breaker(model.deployment, 1 << 30, 1.0), local=model
            )
            aliases[model.id] = Alias(model.id, [dep], limits=model.spec.limits)
    for spec in settings.aliases:
        deployments = []
        for d in spec.deployments:
            cut = breaker(
                d["name"] if isinstance(d, dict) else d.name,
                spec.breaker_failures,
                spec.breaker_cooldown_s,
            )
            if isinstance(d, dict):
                local = models[str(d["name"])]
                deployments.append(Deployment(local.id, local.spec, cut, local=local))
            else:
                key = env.get(d.api_key_env) if d.api_key_env else None
                engine: RemoteEngine
                if d.engine == "anthropic":
                    engine = AnthropicEngine(d, key, spec.default_max_tokens)
                else:
                    engine = OpenAICompatibleEngine(d, key)
                deployments.append(Deployment(d.name, d, cut, remote=engine))
        aliases[spec.id] = alias_from_spec(spec, deployments)
    return Router(aliases)

"""Policy rules filter an alias's deployments; a strategy orders what is left."""

from __future__ import annotations

import random
from dataclasses import dataclass

from inferplane.routing.deployments import Deployment

_RNG = random.Random()


@dataclass(frozen=True)
class RouteRequest:
    """What policy rules read of a request and its caller."""

    data_class: str | None = None  # known and normalized (`routing.policy`)
    needs: frozenset[str] = frozenset()  # the tags its data class requires
    region: str | None = None  # normalized
    prompt_tokens: int = 0
    complex: bool = False  # the alias's complexity classifier judged it so


def allowed(dep: Deployment, req: RouteRequest) -> bool:
    if req.needs and not req.needs <= {t.lower() for t in dep.routing.tags}:
        return False
    # Residency: a region asked for excludes deployments elsewhere (ours have none).
    region = dep.routing.region
    if req.region and region is not None and region.strip().lower() != req.region:
        return False
    context = dep.context_size
    return context is None or req.prompt_tokens < context


def order(
    strategy: str, deployments: list[Deployment], rng: random.Random | None = None
) -> list[Deployment]:
    rng = rng or _RNG
    if strategy == "weighted":
        # A weighted random order (Efraimidis-Spirakis): the first is chosen with
        # probability weight / total, the rest follow as fallbacks; weight 0 comes last.
        def key(d: Deployment) -> float:
            w = d.routing.weight
            return rng.random() ** (1.0 / w) if w > 0 else -1.0

        return sorted(deployments, key=key, reverse=True)
    shuffled = deployments[:]
    rng.shuffle(shuffled)  # ties break at random
    if strategy == "least_busy":
        return sorted(shuffled, key=lambda d: d.in_flight)
    if strategy == "latency":
        # Untried deployments first (to learn them), then by recent time to first token.
        return sorted(shuffled, key=lambda d: d.ewma_ttft_s or 0.0)
    if strategy == "cost":
        return sorted(shuffled, key=lambda d: d.price_per_million)
    raise ValueError(f"unknown strategy {strategy!r}")


def by_complexity(deployments: list[Deployment], large: bool) -> list[Deployment]:
    """Large prompts first to deployments tagged `large`, others first elsewhere."""
    return sorted(deployments, key=lambda d: ("large" in d.routing.tags) != large)

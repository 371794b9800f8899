"""Policy rules filter an alias's deployments; a strategy orders what is left."""

from __future__ import annotations

import random
from dataclasses import dataclass

from inferplane.routing.deployments import Deployment

# Data classes a caller may declare (x-inferplane-data-class) and the deployment tags
# each requires: confidential data goes only where it is tagged private.
DATA_CLASS_TAGS: dict[str, frozenset[str]] = {
    "public": frozenset(),
    "internal": frozenset(),
    "confidential": frozenset({"private"}),
    "restricted": frozenset({"private"}),
}


_RNG = random.Random()
_RANK = {name: i for i, name in enumerate(DATA_CLASS_TAGS)}


def stricter(a: str | None, b: str | None) -> str | None:
    """The more sensitive of two data classes (an unknown class counts as public)."""
    return max((c for c in (a, b) if c), key=lambda c: _RANK.get(c, 0), default=None)


@dataclass(frozen=True)
class RouteRequest:
    """What policy rules read of a request and its caller."""

    data_class: str | None = None
    region: str | None = None
    prompt_tokens: int = 0
    complex: bool = False  # the alias's complexity classifier judged it so


def allowed(dep: Deployment, req: RouteRequest) -> bool:
    tags = set(dep.routing.tags)
    needed = DATA_CLASS_TAGS.get(req.data_class or "", frozenset())
    if not needed <= tags:
        return False
    # Residency: a region asked for excludes deployments elsewhere (ours have none).
    if req.region and dep.routing.region not in (None, req.region):
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

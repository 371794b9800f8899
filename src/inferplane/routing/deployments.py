"""What routing knows of each deployment at run time, and the aliases grouping them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from inferplane.config.routes import AliasSpec, Routing, Strategy
from inferplane.engines.interface import Engine
from inferplane.limits.policy import Limits
from inferplane.routing.breaker import CircuitBreaker
from inferplane.routing.complexity import ComplexityClassifier

_EWMA = 0.2  # weight of the newest observation


@dataclass
class Deployment:
    name: str
    routing: Routing
    breaker: CircuitBreaker
    engine: Engine
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    ewma_ttft_s: float | None = None
    ewma_duration_s: float | None = None
    ewma_error_rate: float = 0.0
    # An upstream's Retry-After: no request before this time.monotonic().
    not_before: float = 0.0

    @property
    def version(self) -> str:
        return self.engine.version

    @property
    def context_size(self) -> int | None:
        size = getattr(self.routing, "context_size", None)  # local spec or remote
        return int(size) if size is not None else None

    @property
    def price_per_million(self) -> float:
        price = self.routing.price
        return price.input_per_million + price.output_per_million if price else 0.0

    @property
    def timeout_s(self) -> float | None:
        """An attempt's longest wait for its first token (remote deployments; a local
        one's wait is bounded by its queue and the alias deadline)."""
        return self.engine.timeout_s

    def ready(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return now >= self.not_before and self.breaker.available()

    def observe(
        self, ok: bool, ttft_s: float | None = None, duration_s: float | None = None
    ) -> None:
        self.requests += 1
        self.ewma_error_rate += _EWMA * ((0.0 if ok else 1.0) - self.ewma_error_rate)
        if not ok:
            self.failures += 1
            return
        if ttft_s is not None:
            self.ewma_ttft_s = _blend(self.ewma_ttft_s, ttft_s)
        if duration_s is not None:
            self.ewma_duration_s = _blend(self.ewma_duration_s, duration_s)

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "engine": self.engine.kind,
            "model_version": self.version,
            "tags": list(self.routing.tags),
            "region": self.routing.region,
            "weight": self.routing.weight,
            "breaker": self.breaker.state,
            "healthy": self.ready(),
            "in_flight": self.in_flight,
            "requests": self.requests,
            "failures": self.failures,
            "error_rate": round(self.ewma_error_rate, 4),
            "ewma_ttft_ms": _ms(self.ewma_ttft_s),
            "ewma_duration_ms": _ms(self.ewma_duration_s),
        }


def _blend(old: float | None, new: float) -> float:
    return new if old is None else old + _EWMA * (new - old)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


@dataclass
class Alias:
    """A public model id: its deployments, in declared order, and how to choose."""

    id: str
    deployments: list[Deployment]
    strategy: Strategy = "weighted"
    fallbacks: list[str] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    max_attempts: int = 1
    deadline_s: float = 120.0
    backoff_base_s: float = 0.05
    backoff_max_s: float = 2.0
    complexity_tokens: int | None = None
    classifier: ComplexityClassifier | None = None
    default_max_tokens: int = 256

    @property
    def by_complexity(self) -> bool:
        """Whether the alias prefers `large` deployments for complex requests."""
        return self.complexity_tokens is not None or self.classifier is not None

    @property
    def counter(self) -> Engine | None:
        """The first deployment's engine that counts prompt tokens exactly (a local
        tokenizer): it counts them for admission."""
        return next((d.engine for d in self.deployments if d.engine.counts), None)


def alias_from_spec(
    spec: AliasSpec,
    deployments: list[Deployment],
    classifier: ComplexityClassifier | None = None,
) -> Alias:
    return Alias(
        id=spec.id,
        deployments=deployments,
        strategy=spec.strategy,
        fallbacks=list(spec.fallbacks),
        limits=spec.limits,
        max_attempts=spec.max_attempts,
        deadline_s=spec.deadline_s,
        backoff_base_s=spec.backoff_base_s,
        backoff_max_s=spec.backoff_max_s,
        complexity_tokens=spec.complexity_tokens,
        classifier=classifier,
        default_max_tokens=spec.default_max_tokens,
    )

"""Prometheus metrics, on a registry owned by the app (no module-level singletons)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from inferplane.telemetry.histogram import LoopHistogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "inferplane_requests_total",
            "HTTP requests by route, model and status code.",
            ["route", "model", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "inferplane_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["route", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # Observed per generated token, on the event loop: the lock-free kind.
        self.time_to_first_token = LoopHistogram(
            "inferplane_time_to_first_token_seconds",
            "Time from request to the first generated token.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = LoopHistogram(
            "inferplane_inter_token_latency_seconds",
            "Time between consecutive generated tokens of one response.",
            ["model"],
            buckets=_TOKEN_GAP_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "inferplane_prompt_tokens_total", "Prompt tokens processed.", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "inferplane_completion_tokens_total", "Tokens generated.", ["model"], registry=r
        )
        self.in_flight = Gauge(
            "inferplane_requests_in_flight", "HTTP requests being served.", registry=r
        )
        self.queue_depth = Gauge(
            "inferplane_queue_depth",
            "Requests at a model: running in its worker plus waiting in its queue.",
            ["model"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "inferplane_worker_restarts_total",
            "Worker processes restarted after a crash or a failed health check.",
            ["model"],
            registry=r,
        )
        self.budget_alerts = Counter(
            "inferplane_budget_alerts_total",
            "Budgets that crossed their soft threshold, by scope kind.",
            ["scope"],
            registry=r,
        )
        self.worker_up = Gauge(
            "inferplane_worker_up", "1 when the model's worker is ready.", ["model"], registry=r
        )
        self.queue_wait = Histogram(
            "inferplane_queue_wait_seconds",
            "Time a request waited in the model's fair queue for a sequence slot.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # Continuous batching, reported by the worker (see WorkerStats below).
        self.engine_steps = Counter(
            "inferplane_engine_steps_total",
            "Batched decode steps; phase is prefill (prompt tokens only), decode (generated "
            "tokens only), mixed, or aborted (interrupted for a newcomer, then redone).",
            ["model", "phase"],
            registry=r,
        )
        self.engine_step_seconds = Counter(
            "inferplane_engine_step_seconds_total",
            "Time spent in batched decode steps, by phase.",
            ["model", "phase"],
            registry=r,
        )
        self.engine_tokens = Counter(
            "inferplane_engine_tokens_total",
            "Tokens through the model's batched steps: prompt (prefilled), reused (prompt "
            "tokens found in a slot's prefix cache, not prefilled again) or generated.",
            ["model", "kind"],
            registry=r,
        )
        self.engine_batch_size = Histogram(
            "inferplane_engine_batch_size",
            "Sequences decoded together in one step.",
            ["model"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
            registry=r,
        )
        self.engine_slots_in_use = Gauge(
            "inferplane_engine_slots_in_use",
            "Sequence slots of the model's worker holding a request.",
            ["model"],
            registry=r,
        )
        self.route_attempts = Counter(
            "inferplane_route_attempts_total",
            "Attempts at a deployment, by outcome: success, retry (failed before the first "
            "token; the request moved on) or failure (the request failed with it).",
            ["model", "deployment", "outcome"],
            registry=r,
        )
        self.route_complexity = Counter(
            "inferplane_route_complexity_total",
            "Requests to an alias with a complexity classifier, by its verdict: small, large "
            "or failed (the classifier could not run; the token threshold alone decided).",
            ["model", "verdict"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            "inferplane_breaker_transitions_total",
            "Circuit breaker state changes of a deployment.",
            ["deployment", "to"],
            registry=r,
        )
        self.deployment_healthy = Gauge(
            "inferplane_deployment_healthy",
            "1 while a deployment's breaker lets requests through, else 0.",
            ["deployment"],
            registry=r,
        )
        self.cache_requests = Counter(
            "inferplane_cache_requests_total",
            "Response cache lookups by tenant scope, model and result (hit, semantic-hit, miss).",
            ["scope", "model", "result"],
            registry=r,
        )
        self.cache_saved_tokens = Counter(
            "inferplane_cache_saved_tokens_total",
            "Prompt and completion tokens not processed again thanks to cache hits.",
            ["scope", "model"],
            registry=r,
        )
        self.cache_saved_usd = Counter(
            "inferplane_cache_saved_usd_total",
            "What cache hits would have cost at the price of the answer's generation, "
            "minus what they were charged.",
            ["scope", "model"],
            registry=r,
        )
        self.cache_lookup_seconds = Histogram(
            "inferplane_cache_lookup_seconds",
            "Semantic cache lookups: embedding the final user turn, and the index search.",
            ["stage"],
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
            registry=r,
        )
        self.guardrail_decisions = Counter(
            "inferplane_guardrail_decisions_total",
            "Guardrail rules that found something, by policy, rule, detector and action.",
            ["policy", "rule", "detector", "action"],
            registry=r,
        )
        self.guardrail_seconds = Histogram(
            "inferplane_guardrail_detector_seconds",
            "Time a guardrail detector took over one text.",
            ["detector"],
            buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
            registry=r,
        )
        self.cache_semantic_score = Histogram(
            "inferplane_cache_semantic_score",
            "Cosine similarity of the entries that answered semantic hits.",
            buckets=(0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99, 1.0),
            registry=r,
        )

    def worker_stats(self, model: str, stats: dict[str, Any]) -> None:
        """Fold one stats report of a batching worker (deltas since its last report)."""
        for phase, (steps, seconds) in stats.get("phases", {}).items():
            self.engine_steps.labels(model, phase).inc(steps)
            self.engine_step_seconds.labels(model, phase).inc(seconds)
        for kind, count in stats.get("tokens", {}).items():
            self.engine_tokens.labels(model, kind).inc(count)
        histogram = self.engine_batch_size.labels(model)
        for size, count in stats.get("batch_sizes", {}).items():
            for _ in range(int(count)):
                histogram.observe(int(size))
        self.engine_slots_in_use.labels(model).set(stats.get("slots_in_use", 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)

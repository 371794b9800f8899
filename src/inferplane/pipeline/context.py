"""A request's frozen inputs (`RequestContext`) and what the pipeline learns about it as
it runs (`Outcome`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from inferplane.routing.deployments import Alias, Deployment
from inferplane.telemetry.ids import unique_id
from inferplane.tenancy.records import Principal


@dataclass(slots=True)
class Outcome:
    """What the pipeline learns about one request, written by the stages and routing as
    they go. Read once at the end: the response's headers (`api/headers.py`), the
    request metrics and the usage ledger. Created by the HTTP layer's middleware before
    anything runs, so a request refused early still answers with what is known."""

    model: str | None = None  # the model id the caller named, once resolved
    # Where and what served the request (set by routing once an attempt delivers, or
    # by the cache from a hit's answer).
    deployment: str | None = None
    model_version: str | None = None
    attempts: int | None = None  # a routed request's attempts (None: not routed)
    # The cache stage: "hit", "semantic-hit" or "miss" (None: not consulted), a hit's age
    # in seconds, a semantic hit's similarity.
    cache: str | None = None
    cache_age: int | None = None
    cache_score: float | None = None
    dropped_turns: int = 0  # oldest chat turns left out to fit the context
    # x-ratelimit-* headers of the admission, for the response.
    ratelimit_headers: dict[str, str] = field(default_factory=dict)
    first_token_at: float | None = None  # time.perf_counter()
    # The input guardrails' placeholders and the values they stand for, turned back in
    # the answer by the output stage. Never recorded, logged or cached.
    pseudonyms: dict[str, str] | None = field(default=None, repr=False)
    # The guardrail rules that found something: policy, version, rule, detector, type,
    # action, score (never the value found), for the ledger.
    guardrails: list[dict[str, Any]] = field(default_factory=list)
    # A review an `escalate` rule opened, and (`hold: reply`) the answer given meanwhile.
    review_id: str | None = None
    held_reply: str | None = None

    def served_by(self, deployment: str, version: str) -> None:
        self.deployment, self.model_version = deployment, version

    # Routing's attempt loop writes here as it goes (`routing.router.AttemptLog`).

    def attempted(self) -> None:
        self.attempts = (self.attempts or 0) + 1

    def delivered(self, owner: Alias, dep: Deployment) -> None:
        self.served_by(dep.name, dep.version)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """A request's inputs, as every stage reads them."""

    request_id: str
    principal: Principal
    endpoint: str  # "chat.completions", "completions", "embeddings"
    user: str | None = None  # the end user the caller acts for (OpenAI's `user`)
    started: float = field(default_factory=time.perf_counter)
    # time.monotonic() by which the request must have left the model's queue.
    deadline: float | None = None
    # The ledger's key: unique per request even when callers reuse their x-request-id.
    ledger_id: str = field(default_factory=unique_id)
    outcome: Outcome = field(default_factory=Outcome)

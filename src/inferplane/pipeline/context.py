"""The per-request context every stage reads and extends."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from inferplane.telemetry.ids import unique_id
from inferplane.tenancy.records import Principal


@dataclass(slots=True)
class RequestContext:
    request_id: str
    principal: Principal
    endpoint: str  # "chat.completions", "completions", "embeddings"
    user: str | None = None  # the end user the caller acts for (OpenAI's `user`)
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    # time.monotonic() by which the request must have left the model's queue.
    deadline: float | None = None
    # The ledger's key: unique per request even when callers reuse their x-request-id.
    ledger_id: str = field(default_factory=unique_id)
    # x-ratelimit-* headers of the admission, for the response.
    ratelimit_headers: dict[str, str] = field(default_factory=dict)
    # Set by routing once an attempt delivers: where and what served the request.
    deployment: str | None = None
    model_version: str | None = None
    attempts: int = 0
    # Set by the cache stage: "hit", "semantic-hit" or "miss" (None: not consulted), and
    # a hit's age in seconds.
    cache: str | None = None
    cache_age: int | None = None
    cache_score: float | None = None  # a semantic hit's similarity
    dropped_turns: int = 0  # oldest chat turns left out to fit the context

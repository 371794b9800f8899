"""The per-request context every stage reads and extends."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from inferplane.tenancy.records import Principal


@dataclass(slots=True)
class RequestContext:
    request_id: str
    principal: Principal
    started: float = field(default_factory=time.perf_counter)
    # x-ratelimit-* headers of the admission, for the response.
    ratelimit_headers: dict[str, str] = field(default_factory=dict)

"""A response's inferplane headers, built from the request's `Outcome` in one place, for
every endpoint alike.

- `x-request-id`, `x-inferplane-model-version` and `x-inferplane-deployment` on every
  response ("none" where no model served it);
- `x-inferplane-attempts` where the request was routed;
- `x-inferplane-context-truncated` where the context policy left chat turns out;
- `x-inferplane-cache` (with `Age` on a hit, `x-inferplane-cache-score` on a semantic
  one) where the response cache was consulted;
- `x-inferplane-review-id` where a guardrail rule sent the request to a person;
- the admission's `x-ratelimit-*` headers, on successes as on 429s.
"""

from __future__ import annotations

from inferplane.pipeline.context import Outcome

Headers = list[tuple[bytes, bytes]]


def response_headers(request_id: str, out: Outcome) -> Headers:
    headers = [
        (b"x-request-id", request_id.encode()),
        (b"x-inferplane-model-version", (out.model_version or "none").encode()),
        (b"x-inferplane-deployment", (out.deployment or "none").encode()),
    ]
    if out.attempts is not None:
        headers.append((b"x-inferplane-attempts", str(out.attempts).encode()))
    if out.dropped_turns:
        headers.append((b"x-inferplane-context-truncated", str(out.dropped_turns).encode()))
    if out.cache is not None:  # hit | semantic-hit | miss
        headers.append((b"x-inferplane-cache", out.cache.encode()))
        if out.cache_age is not None:
            headers.append((b"age", str(out.cache_age).encode()))
        if out.cache_score is not None:
            headers.append((b"x-inferplane-cache-score", str(out.cache_score).encode()))
    if out.review_id is not None:
        headers.append((b"x-inferplane-review-id", out.review_id.encode()))
    headers += [(k.encode(), v.encode()) for k, v in out.ratelimit_headers.items()]
    return headers

from __future__ import annotations

import random
from collections import Counter

from inferplane.config.routes import RemoteDeployment
from inferplane.engines.remote.openai_compatible import OpenAICompatibleEngine, retry_after_seconds
from inferplane.limits.pricing import Price
from inferplane.routing.breaker import CircuitBreaker
from inferplane.routing.deployments import Deployment
from inferplane.routing.strategies import (
    RouteRequest,
    allowed,
    by_complexity,
    order,
)


def _dep(name: str, **routing: object) -> Deployment:
    spec = RemoteDeployment.model_validate(
        {
            "name": name,
            "engine": "openai_compatible",
            "base_url": "http://127.0.0.1:9/v1",
            "model": "m",
            **routing,
        }
    )
    return Deployment(name, spec, CircuitBreaker(3, 1.0), OpenAICompatibleEngine(spec, None))


def test_weighted_order_picks_the_first_in_proportion_to_weight() -> None:
    deps = [_dep("a", weight=90), _dep("b", weight=10), _dep("off", weight=0)]
    rng = random.Random(1)
    firsts = Counter(order("weighted", deps, rng)[0].name for _ in range(10_000))
    assert 0.88 < firsts["a"] / 10_000 < 0.92
    assert firsts["off"] == 0
    # Everything stays in the order, as fallbacks; weight 0 last.
    assert [d.name for d in order("weighted", deps, rng)][-1] == "off"


def test_least_busy_latency_and_cost_orders() -> None:
    a, b, c = _dep("a"), _dep("b"), _dep("c")
    a.in_flight, b.in_flight, c.in_flight = 3, 0, 1
    assert [d.name for d in order("least_busy", [a, b, c])] == ["b", "c", "a"]
    a.ewma_ttft_s, b.ewma_ttft_s, c.ewma_ttft_s = 0.2, 0.5, 0.1
    assert [d.name for d in order("latency", [a, b, c])] == ["c", "a", "b"]
    untried = _dep("new")
    assert order("latency", [a, untried])[0].name == "new"  # learn it first
    cheap = _dep("cheap", price=Price(input_per_million=0.1, output_per_million=0.2))
    dear = _dep("dear", price=Price(input_per_million=1, output_per_million=2))
    assert [d.name for d in order("cost", [dear, cheap])] == ["cheap", "dear"]
    local_free = _dep("free")
    assert order("cost", [dear, cheap, local_free])[0].name == "free"


def test_policy_rules() -> None:
    private = _dep("p", tags=["private"], region="eu-west")
    external = _dep("e", tags=["external"], region="us-east", context_size=100)
    anywhere = _dep("x")
    confidential = RouteRequest(data_class="confidential", needs=frozenset({"private"}))
    assert [allowed(d, confidential) for d in (private, external, anywhere)] == [
        True,
        False,
        False,
    ]
    assert allowed(external, RouteRequest(data_class="public"))
    eu = RouteRequest(region="eu-west")
    shouting = _dep("s", tags=["PRIVATE"], region="EU-West")  # as spelt in a config
    assert allowed(shouting, eu) and allowed(shouting, confidential)
    assert [allowed(d, eu) for d in (private, external, anywhere)] == [True, False, True]
    assert not allowed(external, RouteRequest(prompt_tokens=100))  # does not fit
    assert allowed(external, RouteRequest(prompt_tokens=99))


def test_complexity_prefers_large_deployments_for_large_prompts() -> None:
    small, large = _dep("small"), _dep("large", tags=["large"])
    assert [d.name for d in by_complexity([small, large], large=True)] == ["large", "small"]
    assert [d.name for d in by_complexity([large, small], large=False)] == ["small", "large"]


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("2.5") == 2.5
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past

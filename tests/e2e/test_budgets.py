"""Budgets: requests are refused once spent, and concurrency cannot overshoot the cap."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.e2e.server import Server

LLM, EMB = "gemma-3-270m", "all-minilm-l6-v2"


def _price(server: Server, model: str, **price: float) -> None:
    with server.http() as admin:
        assert admin.put(f"/admin/v1/pricing/{model}", json=price).status_code == 200


def _key(server: Server, **fields: Any) -> dict[str, Any]:
    with server.http() as admin:
        resp = admin.post("/admin/v1/keys", json={"name": "budget", **fields})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def _spent(server: Server, **filters: str) -> float:
    with server.http() as admin:
        rows = admin.get("/admin/v1/usage", params=filters).json()["data"]
    return float(sum(r["cost_usd"] for r in rows))


def _embed(server: Server, key: str) -> httpx.Response:
    with server.http(key) as http:
        return http.post("/v1/embeddings", json={"model": EMB, "input": "spend"})


def test_concurrent_requests_cannot_overshoot_a_key_budget(server: Server) -> None:
    _price(server, EMB, per_request=0.01)
    key = _key(server, budget={"usd": 0.05, "period": "day"})
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda _: _embed(server, key["key"]), range(20)))
    codes = sorted(r.status_code for r in statuses)
    assert codes.count(200) == 5 and codes.count(429) == 15
    refused = next(r for r in statuses if r.status_code == 429).json()["error"]
    assert refused["type"] == "insufficient_quota" and refused["code"] == "insufficient_quota"
    assert abs(_spent(server, key_id=key["id"]) - 0.05) < 1e-9


def test_team_budget_is_shared(server: Server) -> None:
    _price(server, EMB, per_request=0.01)
    with server.http() as admin:
        org = admin.post("/admin/v1/orgs", json={"name": f"b-{time.time_ns()}"}).json()
        team = admin.post(
            "/admin/v1/teams",
            json={"name": "t", "org_id": org["id"], "budget": {"usd": 0.03, "period": "week"}},
        ).json()
    a, b = (_key(server, team_id=team["id"])["key"] for _ in range(2))
    results = [_embed(server, k).status_code for k in (a, b, a, b)]
    assert results == [200, 200, 200, 429]


def test_generation_reserves_worst_case_and_stops_at_the_cap(server: Server) -> None:
    # One token costs $0.001: the cap of $0.05 is 50 tokens.
    _price(server, LLM, input_per_million=1000, output_per_million=1000)
    key = _key(server, budget={"usd": 0.05, "period": "total"})
    client_body = {"model": LLM, "prompt": "1, 2, 3,", "max_tokens": 10, "temperature": 0}
    used = 0
    with server.http(key["key"]) as http:
        for _ in range(20):
            resp = http.post("/v1/completions", json=client_body)
            if resp.status_code == 429:
                assert resp.json()["error"]["code"] == "insufficient_quota"
                break
            usage = resp.json()["usage"]
            used += usage["total_tokens"]
        else:
            raise AssertionError("the budget never ran out")
    worst = usage["prompt_tokens"] + 10
    # Refused only when the worst case no longer fits, and never above the cap.
    assert 50 - worst < used <= 50
    assert abs(_spent(server, key_id=key["id"]) - used / 1000) < 1e-9


def test_budget_bad_input(server: Server) -> None:
    with server.http() as admin:
        for budget, param in [
            ({"usd": -1}, "budget.usd"),
            ({"usd": 1, "period": "fortnight"}, "budget.period"),
            ({"usd": 1, "soft_pct": 0}, "budget.soft_pct"),
            ({"dollars": 1}, "budget.usd"),
        ]:
            resp = admin.post("/admin/v1/keys", json={"name": "x", "budget": budget})
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"]["param"] == param

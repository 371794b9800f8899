"""The usage ledger and pricing: totals match what the responses said, exactly."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from tests.e2e.server import Server

LLM, EMB = "gemma-3-270m", "all-minilm-l6-v2"


def _setup_key(server: Server) -> dict[str, Any]:
    with server.http() as admin:
        org = admin.post("/admin/v1/orgs", json={"name": "usage-org"}).json()
        team = admin.post("/admin/v1/teams", json={"name": "u", "org_id": org["id"]}).json()
        key = admin.post("/admin/v1/keys", json={"name": "u", "team_id": team["id"]}).json()
    return {"org": org, "team": team, "key": key}


def test_usage_totals_match_responses_and_prices(server: Server) -> None:
    with server.http() as admin:
        put = admin.put(
            f"/admin/v1/pricing/{LLM}",
            json={"input_per_million": 0.5, "output_per_million": 1.5},
        )
        assert put.status_code == 200, put.text
        assert admin.put(f"/admin/v1/pricing/{EMB}", json={"per_request": 0.0001}).is_success
    ids = _setup_key(server)
    client = server.client(key=ids["key"]["key"])
    prompt = completion = 0
    chat = client.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, user="alice"
    )
    assert chat.usage is not None
    prompt, completion = (
        prompt + chat.usage.prompt_tokens,
        completion + chat.usage.completion_tokens,
    )
    stream = client.completions.create(
        model=LLM, prompt="Once", max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    last = [c for c in stream][-1]
    assert last.usage is not None
    prompt, completion = (
        prompt + last.usage.prompt_tokens,
        completion + last.usage.completion_tokens,
    )
    emb = client.embeddings.create(model=EMB, input=["a b c", "d e"])
    with server.http() as admin:
        rows = admin.get(
            "/admin/v1/usage",
            params={"group_by": "model", "key_id": ids["key"]["id"]},
        ).json()["data"]
        by_model = {r["model"]: r for r in rows}
        llm, em = by_model[LLM], by_model[EMB]
        assert (llm["requests"], llm["prompt_tokens"], llm["completion_tokens"]) == (
            2,
            prompt,
            completion,
        )
        expected_llm = (prompt * 0.5 + completion * 1.5) / 1e6
        assert llm["cost_usd"] == pytest.approx(expected_llm, abs=1e-12)
        assert (em["requests"], em["prompt_tokens"]) == (1, emb.usage.prompt_tokens)
        assert em["cost_usd"] == pytest.approx(0.0001, abs=1e-12)

        by_team = admin.get(
            "/admin/v1/usage",
            params={"group_by": "org,team,user", "team_id": ids["team"]["id"]},
        ).json()["data"]
        alice = next(r for r in by_team if r["user"] == "alice")
        assert alice["org_id"] == ids["org"]["id"] and alice["requests"] == 1

        daily = admin.get(
            "/admin/v1/usage",
            params={"granularity": "day", "key_id": ids["key"]["id"], "format": "csv"},
        )
        assert daily.headers["content-type"].startswith("text/csv")
        (row,) = list(csv.DictReader(io.StringIO(daily.text)))
        assert int(row["requests"]) == 3 and len(row["period"]) == 10

        prices = admin.get("/admin/v1/pricing").json()["data"]
        assert {p["model"] for p in prices} >= {LLM, EMB}


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "planet"}, "group_by"),
        ({"from": "yesterday-ish"}, "from"),
        ({"granularity": "week"}, "granularity"),
    ],
)
def test_usage_bad_queries(server: Server, params: dict[str, str], param: str) -> None:
    with server.http() as admin:
        resp = admin.get("/admin/v1/usage", params=params)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_pricing_bad_input(server: Server) -> None:
    with server.http() as admin:
        neg = admin.put(f"/admin/v1/pricing/{LLM}", json={"input_per_million": -1})
        unknown = admin.put("/admin/v1/pricing/no-such-model", json={})
        extra = admin.put(f"/admin/v1/pricing/{LLM}", json={"currency": "EUR"})
    assert neg.status_code == 400 and neg.json()["error"]["param"] == "input_per_million"
    assert unknown.status_code == 404
    assert extra.status_code == 400 and extra.json()["error"]["param"] == "currency"

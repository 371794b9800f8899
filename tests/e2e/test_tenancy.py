"""Orgs, teams and keys through the admin API; limits, scoping and expiry on the data plane."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.server import Server, metric

LLM, EMB = "gemma-3-270m", "all-minilm-l6-v2"


def _key(server: Server, **fields: Any) -> dict[str, Any]:
    with server.http() as admin:
        resp = admin.post("/admin/v1/keys", json={"name": "test", **fields})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def _team(server: Server, **fields: Any) -> dict[str, Any]:
    with server.http() as admin:
        org = admin.post("/admin/v1/orgs", json={"name": f"org-{time.time_ns()}"}).json()
        resp = admin.post("/admin/v1/teams", json={"name": "t", "org_id": org["id"], **fields})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def _embed(server: Server, key: str) -> httpx.Response:
    with server.http(key) as http:
        return http.post("/v1/embeddings", json={"model": EMB, "input": "hello"})


def test_rpm_limit_with_exact_headers(server: Server) -> None:
    key = _key(server, limits={"rpm": 3})["key"]
    remaining = []
    for _ in range(3):
        resp = _embed(server, key)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(resp.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["2", "1", "0"]
    refused = _embed(server, key)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"]
    assert 50 <= int(refused.headers["retry-after"]) <= 60


def test_tpm_reserves_prompt_plus_max_tokens_and_settles(server: Server) -> None:
    key = _key(server, limits={"tpm": 100})["key"]
    client = server.client(key=key)
    first = client.completions.with_raw_response.create(
        model=LLM, prompt="Once upon a time", max_tokens=60, temperature=0
    )
    usage = first.parse().usage
    assert usage is not None
    assert first.headers["x-ratelimit-limit-tokens"] == "100"
    reserved = usage.prompt_tokens + 60
    assert first.headers["x-ratelimit-remaining-tokens"] == str(100 - reserved)
    with pytest.raises(openai.RateLimitError) as info:
        client.completions.create(model=LLM, prompt="Once upon a time", max_tokens=60)
    headers = info.value.response.headers
    assert info.value.code == "tokens_limit_exceeded"
    # Settled to the real use of the first request (prompt + completion).
    assert headers["x-ratelimit-remaining-tokens"] == str(100 - usage.total_tokens)
    small = client.completions.with_raw_response.create(
        model=LLM, prompt="Hi", max_tokens=2, temperature=0
    )
    assert small.http_response.status_code == 200
    with pytest.raises(openai.RateLimitError) as too_big:
        client.completions.create(model=LLM, prompt="Hi", max_tokens=200)
    assert too_big.value.code == "request_too_large"


def test_disconnect_refunds_what_was_not_generated(server: Server) -> None:
    key = _key(server, limits={"tpm": 1000})["key"]
    body = {
        "model": LLM,
        "prompt": "1, 2, 3, 4,",
        "max_tokens": 500,
        "stream": True,
        "temperature": 0,
    }
    with server.http(key) as http, http.stream("POST", "/v1/completions", json=body) as resp:
        reserved_left = int(resp.headers["x-ratelimit-remaining-tokens"])
        next(resp.iter_lines())
    assert reserved_left < 500
    deadline = time.monotonic() + 30
    while metric(server, "inferplane_queue_depth", model=LLM) != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    after = _embed_like_completion(server, key)
    # Far more than the 500 reserved came back: only the tokens generated were kept.
    assert int(after.headers["x-ratelimit-remaining-tokens"]) > reserved_left + 300


def _embed_like_completion(server: Server, key: str) -> httpx.Response:
    with server.http(key) as http:
        resp = http.post("/v1/completions", json={"model": LLM, "prompt": "x", "max_tokens": 1})
    assert resp.status_code == 200, resp.text
    return resp


def test_concurrency_limit(server: Server) -> None:
    key = _key(server, limits={"max_parallel": 1})["key"]
    body = {
        "model": LLM,
        "prompt": "1, 2, 3, 4,",
        "max_tokens": 300,
        "stream": True,
        "temperature": 0,
    }
    with server.http(key) as http:
        with http.stream("POST", "/v1/completions", json=body) as resp:
            lines = resp.iter_lines()  # kept referenced: dropping it would close the stream
            next(lines)
            second = http.post("/v1/completions", json={**body, "stream": False})
            assert second.status_code == 429
            assert second.json()["error"]["code"] == "concurrency_limit_exceeded"
            assert second.headers["retry-after"] == "1"
        deadline = time.monotonic() + 30
        while (
            third := http.post("/v1/completions", json={**body, "max_tokens": 1, "stream": False})
        ).status_code == 429:
            assert time.monotonic() < deadline, "the slot was never freed"
            time.sleep(0.05)
    assert third.status_code == 200


def test_max_tokens_per_request(server: Server) -> None:
    key = _key(server, limits={"max_tokens": 5})["key"]
    client = server.client(key=key)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=LLM, prompt="Hi", max_tokens=10)
    assert info.value.code == "max_tokens_exceeded"
    assert info.value.body["param"] == "max_tokens"  # type: ignore[index]
    capped = client.completions.create(model=LLM, prompt="Once upon a time", temperature=0)
    assert capped.usage is not None and capped.usage.completion_tokens <= 5


def test_team_limits_are_shared_by_its_keys(server: Server) -> None:
    team = _team(server, limits={"rpm": 2})
    a = _key(server, team_id=team["id"])["key"]
    b = _key(server, team_id=team["id"])["key"]
    assert _embed(server, a).status_code == 200
    assert _embed(server, b).status_code == 200
    assert _embed(server, a).status_code == 429
    other = _key(server)["key"]
    assert _embed(server, other).status_code == 200


def test_model_scoping(server: Server) -> None:
    key = _key(server, models=["gemma-*"])["key"]
    client = server.client(key=key)
    assert [m.id for m in client.models.list()] == [LLM]
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.embeddings.create(model=EMB, input="hi")
    assert info.value.code == "model_not_allowed"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(EMB)
    assert client.completions.create(model=LLM, prompt="Hi", max_tokens=1).choices


def test_expiry(server: Server) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=2)
    key = _key(server, expires_at=soon.isoformat())["key"]
    assert _embed(server, key).status_code == 200
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.2)
    expired = _embed(server, key)
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "expired_api_key"


def test_update_rotate_and_revoke(server: Server) -> None:
    created = _key(server, models=["none-*"])
    with server.http() as admin:
        assert _embed(server, created["key"]).status_code == 403
        patched = admin.patch(f"/admin/v1/keys/{created['id']}", json={"models": ["*"]})
        assert patched.status_code == 200 and patched.json()["models"] == ["*"]
        assert _embed(server, created["key"]).status_code == 200
        rotated = admin.post(f"/admin/v1/keys/{created['id']}/rotate", json={"grace_seconds": 0})
        assert rotated.status_code == 200
        assert _embed(server, created["key"]).status_code == 401
        assert _embed(server, rotated.json()["key"]).status_code == 200
        assert admin.delete(f"/admin/v1/keys/{created['id']}").status_code == 200
        assert _embed(server, rotated.json()["key"]).status_code == 401
        got = admin.get(f"/admin/v1/keys/{created['id']}").json()
    assert got["revoked_at"] is not None and "key" not in got


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/admin/v1/keys", {"name": "k", "colour": "red"}, "colour"),
        ("/admin/v1/keys", {"name": "k", "limits": {"rpm": -1}}, "limits.rpm"),
        ("/admin/v1/keys", {"name": "k", "limits": {"rmp": 1}}, "limits.rmp"),
        ("/admin/v1/keys", {"name": "k", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ("/admin/v1/keys", {"name": "k", "expires_at": "next tuesday"}, "expires_at"),
        ("/admin/v1/keys", {"name": "k", "priority": "urgent"}, "priority"),
        ("/admin/v1/keys", {"name": "k", "team_id": "team_missing"}, "team_id"),
        ("/admin/v1/teams", {"name": "t", "org_id": "org_missing"}, "org_id"),
        ("/admin/v1/orgs", {}, "name"),
    ],
)
def test_admin_bad_input_names_the_param(
    server: Server, path: str, body: dict[str, Any], param: str
) -> None:
    with server.http() as admin:
        resp = admin.post(path, json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_lists_paginate(server: Server) -> None:
    team = _team(server)
    ids = [_key(server, team_id=team["id"], name=f"k{i}")["id"] for i in range(3)]
    with server.http() as admin:
        page = admin.get("/admin/v1/keys", params={"team_id": team["id"], "limit": 2}).json()
        assert [k["id"] for k in page["data"]] == ids[:2] and page["next"] == ids[1]
        rest = admin.get(
            "/admin/v1/keys", params={"team_id": team["id"], "after": page["next"]}
        ).json()
        assert [k["id"] for k in rest["data"]] == ids[2:] and rest["next"] is None
        orgs = admin.get("/admin/v1/orgs", params={"limit": 1}).json()
        assert len(orgs["data"]) == 1 and "next" in orgs
        assert admin.get(f"/admin/v1/teams/{team['id']}").json()["id"] == team["id"]

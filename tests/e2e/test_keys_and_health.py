"""Admin keys (created, listed, revoked at once), health, readiness and metrics."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.e2e.server import Server, metric


def test_key_lifecycle(server: Server) -> None:
    with server.http() as admin:
        created = admin.post("/admin/v1/keys", json={"name": "team-a"})
        assert created.status_code == 201, created.text
        key = created.json()
        secret, key_id = key["key"], key["id"]
        listed = admin.get("/admin/v1/keys").json()["data"]
        assert any(k["id"] == key_id for k in listed)
        # The secret is shown once: never in listings.
        assert secret not in admin.get("/admin/v1/keys").text

        user = server.client(key=secret)
        assert user.models.list().data
        reply = user.chat.completions.create(
            model="gemma-3-270m", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        assert reply.choices

        with server.http(key=secret) as as_user:
            assert as_user.get("/admin/v1/keys").status_code == 403

        revoked = admin.delete(f"/admin/v1/keys/{key_id}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        with pytest.raises(openai.AuthenticationError):
            user.models.list()
        assert admin.delete("/admin/v1/keys/key_missing").status_code == 404


def test_secret_is_stored_only_as_a_hash(server: Server) -> None:
    with server.http() as admin:
        secret = admin.post("/admin/v1/keys", json={"name": "hash-check"}).json()["key"]
    stored = b"".join(p.read_bytes() for p in server.data_dir.glob("inferplane.db*"))
    assert secret.encode() not in stored
    assert server.admin_key is not None and server.admin_key.encode() not in stored
    assert secret not in server.text() and server.admin_key not in server.text()


def test_health_and_readiness(server: Server) -> None:
    assert httpx.get(server.base_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.base_url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["models"] == {"gemma-3-270m": True, "all-minilm-l6-v2": True}


def test_metrics_are_exported(server: Server) -> None:
    client = server.client()
    before = metric(server, "inferplane_completion_tokens_total", model="gemma-3-270m")
    stream = client.chat.completions.create(
        model="gemma-3-270m",
        messages=[{"role": "user", "content": "Say something."}],
        max_tokens=5,
        stream=True,
    )
    for _ in stream:
        pass
    body = httpx.get(server.base_url + "/metrics").text
    for name in (
        "inferplane_requests_total",
        "inferplane_request_duration_seconds_bucket",
        "inferplane_time_to_first_token_seconds_bucket",
        "inferplane_inter_token_latency_seconds_bucket",
        "inferplane_prompt_tokens_total",
        "inferplane_completion_tokens_total",
        "inferplane_requests_in_flight",
        "inferplane_queue_depth",
        "inferplane_worker_restarts_total",
    ):
        assert name in body, name
    assert metric(server, "inferplane_completion_tokens_total", model="gemma-3-270m") > before
    ok = metric(
        server,
        "inferplane_requests_total",
        route="/v1/chat/completions",
        model="gemma-3-270m",
        status="200",
    )
    assert ok >= 1

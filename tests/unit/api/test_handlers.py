"""The error handlers and the gateway middleware on a minimal app (no models needed)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from inferplane.api.errors import install_error_handlers
from inferplane.api.middleware import GatewayMiddleware
from inferplane.errors import Overloaded
from inferplane.telemetry.metrics import Metrics


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    metrics = Metrics()
    app.add_middleware(GatewayMiddleware, metrics=metrics, max_body_bytes=1024)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    @app.get("/busy")
    async def busy() -> None:
        raise Overloaded(model="m", queued=4, max_queued=4, retry_after=3)

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        request.state.outcome.served_by("local/m", "sha256:abc")
        return {"size": len(await request.body())}

    return TestClient(app, raise_server_exceptions=False)


def test_unexpected_errors_are_generic_500_without_internals(client: TestClient) -> None:
    resp = client.get("/boom", headers={"x-request-id": "rid-1"})
    assert resp.status_code == 500
    error = resp.json()["error"]
    assert error["type"] == "api_error"
    assert "rid-1" in error["message"]
    assert "secret" not in resp.text and "Traceback" not in resp.text


def test_typed_errors_carry_status_and_headers(client: TestClient) -> None:
    resp = client.get("/busy")
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "3"
    assert resp.json()["error"]["code"] == "queue_full"


def test_body_limit_with_and_without_content_length(client: TestClient) -> None:
    assert client.post("/echo", content=b"x" * 1024).json() == {"size": 1024}
    resp = client.post("/echo", content=b"x" * 1025)
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "payload_too_large"
    chunked = client.post("/echo", content=iter([b"x" * 600, b"x" * 600]))
    assert chunked.status_code == 413


def test_headers_on_every_response(client: TestClient) -> None:
    ok = client.post("/echo", content=b"{}")
    assert ok.headers["x-inferplane-model-version"] == "sha256:abc"
    assert ok.headers["x-inferplane-deployment"] == "local/m"
    assert ok.headers["x-request-id"].startswith("req_")
    missing = client.get("/nowhere", headers={"x-request-id": "abc"})
    assert missing.status_code == 404
    assert missing.headers["x-request-id"] == "abc"
    assert missing.headers["x-inferplane-model-version"] == "none"
    assert missing.json()["error"]["code"] == "not_found"

"""Regression tests of the hardening findings (input at the edge, admin safety, the
smaller ones), against the real server. Every request here goes to 127.0.0.1 only:
URLs the gateway must not reach are refused when they are configured."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import Server, metric, running_server
from tests.e2e.upstreams import fast_upstream

CHAT = {"model": "remote", "messages": [{"role": "user", "content": "hi"}]}
ANSWER = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


class _Recorder(BaseHTTPRequestHandler):
    """An OpenAI-compatible upstream that remembers each request's Authorization."""

    seen: list[str | None]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.seen.append(self.headers.get("authorization"))
        body = json.dumps(ANSWER).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[str, list[str | None]]]:
    seen: list[str | None] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", seen
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("hardening")
    with fast_upstream() as url:
        config = tmp / "inferplane.yaml"
        config.write_text(
            f"""
models:
  - id: gemma
    engine: llamacpp
    bundled: gemma3-270m-q4-k-m
  - id: remote
    deployments:
      - name: fast
        engine: openai_compatible
        base_url: {url}
        model: fast
"""
        )
        with running_server(tmp / "data", config=config) as srv:
            yield srv


def _error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 2**64 + 1),
        ("max_tokens", 2**31),
        ("max_completion_tokens", 10**30),
        ("seed", 2**64),
        ("seed", -(2**63) - 1),
        ("user", "u" * 257),
        ("stop", ["s" * 257]),
        ("model", "m" * 257),
        ("metadata", {"k": "v" * 513}),
    ],
)
def test_out_of_range_fields_are_400_naming_them(server: Server, field: str, value: Any) -> None:
    with server.http() as http:
        resp = http.post("/v1/chat/completions", json={**CHAT, field: value})
    assert _error(resp, 400)["param"].split("[")[0].split(".")[0] == field


def test_largest_accepted_numbers_still_work(server: Server) -> None:
    with server.http() as http:
        resp = http.post(
            "/v1/chat/completions", json={**CHAT, "seed": 2**63 - 1, "max_tokens": 2**31 - 1}
        )
    assert resp.status_code == 200, resp.text


def test_max_tokens_above_a_local_models_context_is_400(server: Server) -> None:
    with server.http() as http:
        resp = http.post(
            "/v1/completions", json={"model": "gemma", "prompt": "Hi", "max_tokens": 10**12}
        )
    assert _error(resp, 400)["param"] == "max_tokens"


def test_usage_group_by_twice_is_400(server: Server) -> None:
    with server.http() as http:
        resp = http.get("/admin/v1/usage", params={"group_by": "team,team"})
    assert _error(resp, 400)["param"] == "group_by"


def test_usage_csv_escapes_formulas(server: Server) -> None:
    evil = '=HYPERLINK("http://127.0.0.1/x","click")'
    with server.http() as http:
        assert http.post("/v1/chat/completions", json={**CHAT, "user": evil}).status_code == 200
        csv = http.get("/admin/v1/usage", params={"group_by": "user", "format": "csv"}).text
    assert "'" + evil.replace('"', '""') in csv
    assert "\n" + evil not in csv and "," + evil not in csv


@pytest.mark.parametrize("path", ["/healthz/", "/admin/v1/keys/"])
def test_no_host_reflection_in_redirects(server: Server, path: str) -> None:
    with server.http() as http:
        resp = http.get(path, headers={"host": "evil.example"})
    assert "location" not in resp.headers
    _error(resp, 404)


def test_bootstrap_admin_key_cannot_be_locked_out(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_server(data) as srv, srv.http() as http:
        patched = http.patch(
            "/admin/v1/keys/key_admin", json={"expires_at": "2099-01-01T00:00:00Z"}
        )
        assert _error(patched, 400)["param"] == "expires_at"
    # An expiry stored by an older version (or by hand) is cleared at the next start.
    with sqlite3.connect(next(data.glob("*.db"))) as db:
        db.execute("UPDATE api_keys SET expires_at = '2000-01-01 00:00:00' WHERE id = 'key_admin'")
    for admin_key in ("ipk-test-admin", "ipk-a-new-admin"):
        with running_server(data, admin_key=admin_key) as srv, srv.http() as http:
            assert http.get("/admin/v1/keys").status_code == 200


def _deployment(server: Server, **body: Any) -> httpx.Response:
    with server.http() as http:
        spec = {"alias": "runtime", "engine": "openai_compatible", "model": "m", **body}
        return http.post("/admin/v1/deployments", json=spec)


@pytest.mark.parametrize("name", ["a/b", "../x", ".hidden", "sp ace", "x" * 129])
def test_deployment_names_are_url_safe(server: Server, name: str) -> None:
    resp = _deployment(server, name=name, base_url="http://127.0.0.1:9/v1")
    assert _error(resp, 400)["param"] == "name"


@pytest.mark.parametrize("key", ["sk-abc\r\nx-injected: 1", "sk abc", "sk-\x00", "sk-é"])
def test_provider_keys_with_control_characters_are_refused(server: Server, key: str) -> None:
    resp = _deployment(server, name="bad-key", base_url="http://127.0.0.1:9/v1", api_key=key)
    assert _error(resp, 400)["param"] == "api_key"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest",
        "http://[fe80::1]/v1",
        "http://2852039166/v1",
        "http://metadata.google.internal/v1",
        "127.0.0.1:8080",
        "gopher://127.0.0.1:70/",
        "http://user:pw@127.0.0.1:9/v1",
    ],
)
def test_deployment_urls_outside_the_policy_are_refused(server: Server, url: str) -> None:
    resp = _deployment(server, name="guarded", base_url=url)
    assert _error(resp, 400)["param"] == "base_url"


def test_a_changed_url_drops_the_stored_key(
    server: Server, recorder: tuple[str, list[str | None]]
) -> None:
    url, seen = recorder
    made = _deployment(server, alias="keyed", name="keyed", base_url=url, api_key="sk-secret")
    assert made.status_code == 201, made.text
    chat = {**CHAT, "model": "keyed"}
    with server.http() as http:
        assert http.post("/v1/chat/completions", json=chat).status_code == 200
        assert seen[-1] == "Bearer sk-secret"
        # The same server under another spelling: the key is not carried over.
        moved = url.replace("127.0.0.1", "localhost")
        patched = http.patch("/admin/v1/deployments/keyed", json={"base_url": moved})
        assert patched.status_code == 200, patched.text
        assert http.post("/v1/chat/completions", json=chat).status_code == 200
        assert seen[-1] is None
        # Re-supplied with the change, it is used.
        http.patch("/admin/v1/deployments/keyed", json={"base_url": url, "api_key": "sk-2"})
        assert http.post("/v1/chat/completions", json=chat).status_code == 200
        assert seen[-1] == "Bearer sk-2"


def test_a_deployment_pointing_at_the_gateway_is_not_amplified(server: Server) -> None:
    made = _deployment(
        server,
        alias="loop",
        name="self",
        base_url=server.base_url + "/v1",
        model="loop",
        api_key=server.admin_key,
    )
    assert made.status_code == 201, made.text
    before = metric(
        server, "inferplane_requests_total", route="/v1/chat/completions", model="", status="508"
    )
    with server.http() as http:
        resp = http.post("/v1/chat/completions", json={**CHAT, "model": "loop"})
    assert resp.status_code >= 500 and resp.status_code != 500
    assert resp.json()["error"]["code"] in ("upstream_error", "loop_detected")
    after = metric(
        server, "inferplane_requests_total", route="/v1/chat/completions", model="", status="508"
    )
    # One refused hop per attempt of the one request (the alias's max_attempts is 4).
    assert 1 <= after - before <= 4


def test_penalties_on_a_local_model(server: Server) -> None:
    """Found by the fuzz suite: a penalty killed the llama.cpp engine's thread (a binding's
    new argument), and every later request to the model waited for its deadline."""
    with server.http() as http:
        for _ in range(2):
            resp = http.post(
                "/v1/completions",
                json={
                    "model": "gemma",
                    "prompt": "1, 2, 3,",
                    "max_tokens": 4,
                    "presence_penalty": 0.5,
                    "frequency_penalty": 0.5,
                },
            )
            assert resp.status_code == 200, resp.text
        workers = http.get("/admin/v1/workers").json()["data"]
    assert all(w["restarts"] == 0 for w in workers)


@pytest.mark.parametrize("bound", ["from", "to"])
def test_usage_dates_out_of_range_are_400(server: Server, bound: str) -> None:
    value = "0001-01-01T00:00:00+05:00" if bound == "from" else "9999-12-31T23:59:59-05:00"
    with server.http() as http:
        resp = http.get("/admin/v1/usage", params={bound: value})
    assert _error(resp, 400)["param"] == bound


@pytest.mark.parametrize(
    "raw",
    [
        b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nX Bad: 1\r\n\r\n",
        b"POST /v1/models HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ],
)
def test_unreadable_http_gets_an_openai_error(server: Server, raw: bytes) -> None:
    port = int(server.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer
    assert b"x-request-id: req_" in head.lower()
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}

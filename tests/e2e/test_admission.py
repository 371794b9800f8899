"""Admission before heavy work, and requests whose clients leave while they wait.

A request is counted against its key's limits before its prompt is tokenized, so
prompts that the tokenizer refuses still use the key's requests per minute. A request
whose client disconnects while it waits in the model's queue leaves the queue at once:
the model never sees it, and it is recorded with status 499 and charged nothing.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.server import Server, metric, running_server

LLM, EMB = "gemma-3-270m", "all-minilm-l6-v2"
SOLO = "solo-gemma"
# About 20 kB and 4,500 tokens: past the 2048-token context, not past any byte bound.
LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 450


def _key(server: Server, **fields: Any) -> dict[str, Any]:
    with server.http() as admin:
        resp = admin.post("/admin/v1/keys", json={"name": "admission", **fields})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def _wait_for(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_prompts_refused_by_the_tokenizer_count_toward_rpm(server: Server) -> None:
    key = _key(server, limits={"rpm": 2})["key"]
    body = {"model": LLM, "prompt": LONG_PROMPT, "max_tokens": 5}
    with server.http(key) as http:
        replies = [http.post("/v1/completions", json=body) for _ in range(4)]
    assert [r.status_code for r in replies] == [400, 400, 429, 429], replies[-1].text
    assert replies[0].json()["error"]["code"] == "context_length_exceeded"
    # Counted before it was refused: the 400 says what is left.
    assert [r.headers["x-ratelimit-remaining-requests"] for r in replies[:2]] == ["1", "0"]
    assert replies[2].json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(replies[2].headers["retry-after"]) <= 60


def test_chat_and_embedding_inputs_refused_by_the_tokenizer_count_too(server: Server) -> None:
    key = _key(server, limits={"rpm": 3})["key"]
    chat = {"model": LLM, "messages": [{"role": "user", "content": LONG_PROMPT}]}
    # About 700 tokens: past the embedding model's 512.
    embed = {"model": EMB, "input": "The quick brown fox jumps over the lazy dog. " * 70}
    with server.http(key) as http:
        codes = [
            http.post("/v1/chat/completions", json=chat).status_code,
            http.post("/v1/embeddings", json=embed).status_code,
            http.post("/v1/embeddings", json=embed).status_code,
            http.post("/v1/chat/completions", json=chat).status_code,
        ]
    assert codes == [400, 400, 400, 429]


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory, gguf_path: Path) -> Iterator[Server]:
    """Gemma decoding one sequence at a time, priced per request and per token."""
    config = tmp_path_factory.mktemp("cfg") / "solo.yaml"
    config.write_text(
        f"""
models:
  - id: {SOLO}
    engine: llamacpp
    path: {gguf_path}
    parallel: 1
    max_queue: 8
    threads: 2
    pricing: {{input_per_million: 1000, output_per_million: 1000, per_request: 0.001}}
"""
    )
    with running_server(tmp_path_factory.mktemp("solo"), config=config) as srv:
        yield srv


def _stream_lines(http: httpx.Client, body: dict[str, Any]) -> Iterator[str]:
    with http.stream("POST", "/v1/completions", json=body) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line:
                yield line


def _send_and_leave_open(server: Server, key: str, body: dict[str, Any]) -> socket.socket:
    """A raw client that sends a whole request and then waits (until it is closed)."""
    url = urlsplit(server.base_url)
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection((url.hostname, url.port))
    sock.sendall(head + payload)
    return sock


def _depth(server: Server) -> float:
    return metric(server, "inferplane_queue_depth", model=SOLO)


def _dispatched(server: Server) -> float:
    """Requests that left the model's queue for the model."""
    return metric(server, "inferplane_queue_wait_seconds_count", model=SOLO)


def test_requests_whose_clients_left_while_queued_never_reach_the_model(solo: Server) -> None:
    runner, quitter = _key(solo)["key"], _key(solo)
    dispatched = _dispatched(solo)
    queued_body = {"model": SOLO, "prompt": "Tell me a long story. " * 60, "max_tokens": 50}
    with solo.http(runner) as http:
        body = {"model": SOLO, "prompt": "1, 2, 3, 4,", "max_tokens": 1500, "stream": True}
        lines = _stream_lines(http, {**body, "temperature": 0})
        next(lines)  # the model's one sequence slot is taken
        clients = [_send_and_leave_open(solo, quitter["key"], queued_body) for _ in range(3)]
        _wait_for(lambda: _depth(solo) == 4)  # the runner and three waiting
        for sock in clients:
            sock.close()
        # They leave the queue at once, while the runner still holds the model, and are
        # recorded as abandoned: no tokens, no charge (not even the per-request price).
        _wait_for(lambda: _depth(solo) == 1)
        with solo.http() as admin:
            params = {"key_id": quitter["id"], "group_by": "status"}
            rows = admin.get("/admin/v1/usage", params=params).json()["data"]
        assert [(r["status"], r["requests"]) for r in rows] == [(499, 3)]
        assert rows[0]["total_tokens"] == 0 and rows[0]["cost_usd"] == 0
        lines.close()  # the runner leaves too
    _wait_for(lambda: _depth(solo) == 0)
    assert _dispatched(solo) == dispatched + 1  # the runner only ever reached the model
    # The model is free: the next request goes straight to it.
    reply = solo.client(key=runner).completions.create(model=SOLO, prompt="Hi", max_tokens=2)
    assert reply.choices
    assert _dispatched(solo) == dispatched + 2

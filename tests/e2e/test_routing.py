"""Routing across deployments, end to end: inferplane in front of two real
llama-cpp-python OpenAI servers (`python -m llama_cpp.server`), one of them behind a
fault-injecting proxy, called with the official openai client."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.fault_proxy import FaultProxy, Faults
from tests.e2e.server import Server, metric, running_server
from tests.e2e.upstreams import LlamaCppServer


@dataclass
class Setup:
    server: Server
    a: LlamaCppServer
    b: LlamaCppServer
    proxy: FaultProxy


def _remote(name: str, url: str, tags: list[str], weight: float, timeout_s: float = 20) -> str:
    return f"""
      - name: {name}
        engine: openai_compatible
        base_url: {url}
        model: gemma
        tags: [{", ".join(tags)}]
        weight: {weight}
        timeout_s: {timeout_s}"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, gguf_path: Path) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("routing")
    a = LlamaCppServer(gguf_path, tmp / "a.log").start()
    b = LlamaCppServer(gguf_path, tmp / "b.log").start()
    with FaultProxy(a.port) as proxy:
        config = tmp / "config.yaml"
        flaky = _remote("a-flaky", proxy.url, ["private"], 50)
        flaky += _remote("b", b.url, ["external"], 50)
        split = _remote("a-90", a.url, ["private"], 90) + _remote("b-10", b.url, ["external"], 10)
        main = _remote("a-main", a.url, ["private"], 50)
        main += _remote("b-main", b.url, ["external"], 50)
        checked = _remote("a-chk", a.url, ["private"], 50)
        checked += _remote("b-chk", b.url, ["external"], 50)
        proxied = _remote("a-proxied", proxy.url, ["private"], 1)
        slow = _remote("a-slow", proxy.url, ["private"], 1, timeout_s=1)
        hurried = _remote("a-hurried", proxy.url, ["private"], 1)
        config.write_text(
            f"""
server:
  health_interval_s: 0.5
models:
  - id: all-minilm-l6-v2
    engine: sentence_transformers
    bundled: all-minilm-l6-v2
  - id: chat
    max_attempts: 6
    breaker_failures: 1000  # this test is about retries; the breaker has its own
    deployments:{flaky}
  - id: split
    deployments:{split}
  - id: failover
    breaker_failures: 2
    breaker_cooldown_s: 1
    deployments:{main}
  - id: checked
    breaker_failures: 1
    breaker_cooldown_s: 300  # only the active health check can bring it back in time
    deployments:{checked}
  - id: primary
    fallbacks: [split]  # when every deployment here fails
    deployments:{proxied}
  - id: slow
    fallbacks: [split]
    deployments:{slow}
  - id: hurried
    deadline_s: 1
    deployments:{hurried}
  - id: long
    strategy: cost  # the upstream (a llama.cpp server with 512 tokens of context) first
    deployments:
      - name: a-short
        engine: openai_compatible
        base_url: {a.url}
        model: gemma
        price: {{input_per_million: 0.1}}
      - name: local-long
        engine: llamacpp
        bundled: gemma3-270m-q4-k-m
        context_size: 2048
        price: {{input_per_million: 1}}
"""
        )
        try:
            with running_server(tmp / "data", config=config) as server:
                yield Setup(server, a, b, proxy)
        finally:
            a.stop()
            b.stop()


def _complete(
    client: openai.OpenAI, model: str, stream: bool, i: int, **kw: Any
) -> tuple[str, str]:
    """(text, deployment) of one short greedy text completion."""
    text, headers = _complete_headers(client, model, stream, i, **kw)
    return text, headers["x-inferplane-deployment"]


def _complete_headers(
    client: openai.OpenAI, model: str, stream: bool, i: int, **kw: Any
) -> tuple[str, httpx.Headers]:
    args: dict[str, Any] = {
        "model": model,
        "prompt": f"{i}, {i + 1}, {i + 2},",
        "max_tokens": 3,
        "temperature": 0,
        **kw,
    }
    if not stream:
        raw = client.completions.with_raw_response.create(**args)
        return raw.parse().choices[0].text, raw.headers
    with client.completions.with_streaming_response.create(**args, stream=True) as resp:
        text = "".join(c.choices[0].text for c in resp.parse() if c.choices)
        return text, resp.headers


def test_a_flaky_upstream_causes_no_client_errors(setup: Setup) -> None:
    setup.proxy.faults = Faults(error=0.12, reset=0.09, midstream=0.09)  # 30 % fail
    client = setup.server.client(timeout=60)
    labels = {"model": "chat", "deployment": "a-flaky", "outcome": "retry"}
    before = metric(setup.server, "inferplane_route_attempts_total", **labels)
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda i: _complete_headers(client, "chat", i % 2 == 0, i), range(200))
        )
    setup.proxy.faults = Faults()
    empty = [(i, dict(h)) for i, (text, h) in enumerate(results) if not text]
    assert len(results) == 200 and not empty, empty[:3]
    served = Counter(h["x-inferplane-deployment"] for _, h in results)
    assert set(served) == {"a-flaky", "b"}, served
    attempts = Counter(int(h["x-inferplane-attempts"]) for _, h in results)
    assert attempts[1] > 100 and sum(n for k, n in attempts.items() if k > 1) >= 10, attempts
    injected = sum(setup.proxy.log[f] for f in ("error", "reset", "midstream"))
    retried = metric(setup.server, "inferplane_route_attempts_total", **labels) - before
    # The faults happened and every one of them was absorbed by another attempt.
    assert injected >= 20 and retried >= injected, (setup.proxy.log, retried)


def test_weights_split_traffic(setup: Setup) -> None:
    client = setup.server.client(timeout=60)
    a0, b0 = setup.a.requests_served(), setup.b.requests_served()
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda i: _complete_headers(client, "split", False, i)[1], range(400))
        )
    served = Counter(h["x-inferplane-deployment"] for h in results)
    attempts = Counter(h["x-inferplane-attempts"] for h in results)  # said when it fails
    assert sum(served.values()) == 400
    assert 0.85 <= served["a-90"] / 400 <= 0.95, (served, attempts)
    # The upstreams' own logs agree with the response headers.
    assert setup.a.requests_served() - a0 == served["a-90"]
    assert setup.b.requests_served() - b0 == served["b-10"]


def test_confidential_requests_reach_private_deployments_only(setup: Setup) -> None:
    client = setup.server.client(timeout=60)
    b0 = setup.b.requests_served()
    headers = {"x-inferplane-data-class": "confidential"}
    for model in ("chat", "split", "failover"):
        for i in range(10):
            _, dep = _complete(client, model, i % 2 == 0, i, extra_headers=headers)
            assert dep in ("a-flaky", "a-90", "a-main")
    # Chat too (the base model answers a chat turn with an empty message).
    chat = client.chat.completions.with_raw_response.create(
        model="split",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=3,
        extra_headers=headers,
    )
    assert chat.headers["x-inferplane-deployment"] == "a-90"
    assert chat.parse().choices[0].finish_reason == "stop"
    # A key whose metadata says its data is confidential needs no header.
    with setup.server.http() as admin:
        key = admin.post(
            "/admin/v1/keys", json={"name": "phi-app", "metadata": {"data_class": "confidential"}}
        ).json()["key"]
    keyed = setup.server.client(key, timeout=60)
    for i in range(10):
        assert _complete(keyed, "split", i % 2 == 0, i)[1] == "a-90"
    assert setup.b.requests_served() == b0  # B's own log: not one confidential request


def test_a_killed_upstream_is_avoided_and_comes_back(setup: Setup) -> None:
    client = setup.server.client(timeout=60)
    log: list[tuple[float, str, str | None]] = []  # (time, deployment, error)
    started_before_kill: list[bool] = []  # per error: was its request running at the kill?
    stop = threading.Event()
    stopping = float("inf")

    def traffic() -> None:
        i = 0
        while not stop.is_set():
            began = time.monotonic()
            try:
                _, dep = _complete(client, "failover", i % 2 == 0, i)
                log.append((time.monotonic(), dep, None))
            except openai.APIStatusError as exc:  # refused before any token: never allowed
                log.append((time.monotonic(), "", repr(exc)))
                started_before_kill.append(False)
            except openai.APIError as exc:  # a stream cut after its first token
                log.append((time.monotonic(), "", repr(exc)))
                started_before_kill.append(began < stopping)
            i += 1

    runners = [threading.Thread(target=traffic) for _ in range(2)]
    for t in runners:
        t.start()
    try:
        # Until B has served (at 50/50 both have), bounded: on a loaded machine two seconds
        # of traffic were once all A's.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(d == "b-main" for _, d, _ in log):
            time.sleep(0.1)
        time.sleep(1)
        stopping = time.monotonic()
        setup.b.stop()
        killed = time.monotonic()
        time.sleep(6)
        restarting = time.monotonic()  # B may serve before its start() returns
        setup.b.start()
        back = time.monotonic()
        deadline = back + 30
        while time.monotonic() < deadline:
            if any(t > back and dep == "b-main" for t, dep, _ in log):
                break
            time.sleep(0.5)
    finally:
        stop.set()
        for t in runners:
            t.join(60)
    # The only errors allowed: a stream B was serving when it died, after its first token
    # (it ends with an error event, as designed). Every request that began later is served.
    assert all(started_before_kill), [e for _, _, e in log if e]
    assert len(started_before_kill) <= 2
    assert any(t < killed and dep == "b-main" for t, dep, _ in log)  # B served before
    # Within 2 s of the kill, every request went to A.
    elsewhere = [
        (t - killed, dep, e) for t, dep, e in log if killed + 2 < t < restarting and dep != "a-main"
    ]
    assert not elsewhere, elsewhere
    assert len([1 for t, _, _ in log if killed + 2 < t < restarting]) >= 5
    # After B came back, a half-open probe found it and traffic returned.
    assert any(t > back and dep == "b-main" for t, dep, _ in log)


def test_an_active_health_check_lets_a_recovered_upstream_back_early(setup: Setup) -> None:
    client = setup.server.client(timeout=60)

    def breaker() -> str:
        with setup.server.http() as http:
            rows = http.get("/admin/v1/deployments").json()["data"]
        return str(next(r["breaker"] for r in rows if r["name"] == "b-chk"))

    setup.b.stop()
    try:
        for i in range(20):
            assert _complete(client, "checked", False, i)[1] == "a-chk"
            if breaker() == "open":
                break
        assert breaker() == "open"
    finally:
        setup.b.start()
    deadline = time.monotonic() + 15
    served = Counter[str]()
    while time.monotonic() < deadline and not served["b-chk"]:
        served[_complete(client, "checked", False, 0)[1]] += 1
        time.sleep(0.1)
    assert served["b-chk"] == 1, served  # back long before its 300 s cooldown
    assert breaker() == "closed"


def test_deployments_admin_view(setup: Setup) -> None:
    with setup.server.http() as http:
        body = http.get("/admin/v1/deployments").json()
    rows = {(r["model"], r["name"]): r for r in body["data"]}
    flaky = rows[("chat", "a-flaky")]
    assert flaky["breaker"] in ("closed", "open", "half_open")
    assert flaky["requests"] > 0 and flaky["failures"] > 0
    assert rows[("split", "a-90")]["ewma_ttft_ms"] > 0
    assert rows[("split", "b-10")]["tags"] == ["external"]
    assert {"in_flight", "error_rate", "healthy", "region", "weight"} <= set(flaky)


def test_a_stream_broken_after_its_first_token_ends_with_an_error_event(setup: Setup) -> None:
    setup.proxy.faults = Faults(late=1.0)
    try:
        with (
            setup.server.http() as http,
            http.stream(
                "POST",
                "/v1/completions",
                json={"model": "chat", "prompt": "1, 2, 3,", "max_tokens": 8, "stream": True},
                headers={"x-inferplane-data-class": "confidential"},  # the flaky one only
            ) as resp,
        ):
            assert resp.status_code == 200
            events = [line for line in resp.iter_lines() if line.startswith("data:")]
    finally:
        setup.proxy.faults = Faults()
    tokens = [e for e in events[:-2] if '"text":"' in e and '"text":""' not in e]
    assert tokens, events  # the first token reached the client...
    assert '"error"' in events[-2], events  # ...then the failure, as an error event
    assert events[-1] == "data: [DONE]"


def test_a_fallback_alias_serves_when_every_deployment_fails(setup: Setup) -> None:
    client = setup.server.client(timeout=60)
    setup.proxy.faults = Faults(error=1.0)
    try:
        errors = setup.proxy.log["error"]
        attempts = []
        for i in range(4):
            text, headers = _complete_headers(client, "primary", i % 2 == 0, i)
            assert text and headers["x-inferplane-deployment"] in ("a-90", "b-10")
            attempts.append(headers["x-inferplane-attempts"])
    finally:
        setup.proxy.faults = Faults()
    # The alias's own deployment was asked first and failed each time it was asked (after
    # 3 failures its breaker opens; the health check may half-open it again at once).
    assert attempts[0] == "2" and set(attempts) <= {"1", "2"}
    assert setup.proxy.log["error"] - errors == attempts.count("2")


def test_an_attempt_past_its_timeout_moves_on(setup: Setup) -> None:
    client = setup.server.client(timeout=60)
    # The proxied deployment answers after 5 s; its timeout_s is 1.
    setup.proxy.faults = Faults(delay=1.0, delay_s=5)
    try:
        delayed = setup.proxy.log["delay"]
        for stream in (False, True):
            text, headers = _complete_headers(client, "slow", stream, 3)
            assert text and headers["x-inferplane-deployment"] in ("a-90", "b-10")
            assert headers["x-inferplane-attempts"] == "2"
        assert setup.proxy.log["delay"] - delayed == 2
        # The alias's deadline bounds an attempt too: 1 s, though the deployment would
        # wait 20 s. Nothing else can serve: a 504 saying so.
        with setup.server.http() as http:
            body = {"model": "hurried", "prompt": "1, 2,", "max_tokens": 2}
            resp = http.post("/v1/completions", json=body)
        assert resp.status_code == 504, resp.text
        assert resp.json()["error"]["code"] == "upstream_timeout"
    finally:
        setup.proxy.faults = Faults()


def test_a_prompt_too_long_for_one_deployment_goes_to_a_larger_one(setup: Setup) -> None:
    client = setup.server.client(timeout=120)
    short, headers = _complete_headers(client, "long", False, 1)
    assert short and headers["x-inferplane-deployment"] == "a-short"
    # About 700 tokens: over the upstream's 512 (it answers 400 context_length_exceeded),
    # within the local deployment's 2048.
    long_prompt = "one two three four five six seven " * 100

    def a_short() -> dict[str, Any]:
        with setup.server.http() as http:
            rows = http.get("/admin/v1/deployments").json()["data"]
        return next(r for r in rows if r["name"] == "a-short")

    text, headers = _complete_headers(client, "long", False, 0, prompt=long_prompt)
    assert text and headers["x-inferplane-deployment"] == "local-long"
    assert headers["x-inferplane-attempts"] == "2"
    assert a_short()["failures"] == 0  # a 400 context_length_exceeded: not its health
    # Streamed, llama_cpp.server answers 200 and then breaks the stream off before any
    # event (its error comes after the response head): inferplane fails over just the same.
    text, headers = _complete_headers(client, "long", True, 0, prompt=long_prompt)
    assert text and headers["x-inferplane-deployment"] == "local-long"
    assert headers["x-inferplane-attempts"] == "2"
    # Too long for every deployment: the caller gets OpenAI's error.
    with setup.server.http() as http:
        body = {"model": "long", "prompt": long_prompt * 4, "max_tokens": 2}
        resp = http.post("/v1/completions", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "context_length_exceeded"
    assert a_short()["breaker"] == "closed"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_a_local_deployment_is_managed_at_run_time(setup: Setup, tmp_path: Path) -> None:
    body = {
        "alias": "rt-local",
        "name": "rt-gemma",
        "engine": "llamacpp",
        "bundled": "gemma3-270m-q4-k-m",
        "context_size": 1024,
        "tags": ["private"],
    }
    not_gguf = tmp_path / "not.gguf"
    not_gguf.write_text("not a model")

    def workers(admin: httpx.Client) -> dict[str, int]:
        rows = admin.get("/admin/v1/workers").json()["data"]
        return {r["model"]: r["pid"] for r in rows if r["model"].startswith("rt-")}

    with setup.server.http() as admin:
        missing = {**body, "bundled": None, "path": str(tmp_path / "missing.gguf")}
        bad = admin.post("/admin/v1/deployments", json=missing)
        assert bad.status_code == 400 and "not a GGUF file" in bad.json()["error"]["message"]
        # A file that is not a model: its worker fails to load; nothing is kept.
        broken = admin.post(
            "/admin/v1/deployments", json={**body, "bundled": None, "path": str(not_gguf)}
        )
        assert broken.status_code == 400, broken.text
        assert broken.json()["error"]["code"] == "deployment_start_failed"
        assert workers(admin) == {}
        assert admin.patch("/admin/v1/deployments/rt-gemma", json={}).status_code == 404

        created = admin.post("/admin/v1/deployments", json=body)
        assert created.status_code == 201, created.text
        row = created.json()
        assert (row["model"], row["engine"], row["source"]) == ("rt-local", "llamacpp", "runtime")
        rows = admin.get("/admin/v1/deployments").json()["data"]
        long = next(r for r in rows if r["name"] == "local-long")  # the same bundled weights
        assert row["model_version"] == long["model_version"]
        first = workers(admin)["rt-gemma"]
        assert _pid_alive(first)

    client = setup.server.client(timeout=60)
    text, dep = _complete(client, "rt-local", False, 1)
    assert dep == "rt-gemma" and text
    headers = {"x-inferplane-data-class": "confidential"}
    assert _complete(client, "rt-local", True, 2, extra_headers=headers)[1] == "rt-gemma"

    with setup.server.http() as admin:
        # Routing attributes alone: the same worker goes on serving.
        reweighted = admin.patch("/admin/v1/deployments/rt-gemma", json={"weight": 5})
        assert reweighted.status_code == 200 and reweighted.json()["weight"] == 5
        assert workers(admin) == {"rt-gemma": first}
        # The worker's own settings: a new worker starts, then the old one stops.
        resized = admin.patch("/admin/v1/deployments/rt-gemma", json={"context_size": 2048})
        assert resized.status_code == 200, resized.text
        assert _wait_gone(first)
        second = workers(admin)["rt-gemma"]
        assert second != first
    assert _complete(client, "rt-local", False, 3)[1] == "rt-gemma"

    # Removed while a stream runs on it: the stream finishes, then the worker stops.
    pieces: list[str] = []
    finish: list[str | None] = []
    started = threading.Event()

    def stream() -> None:
        for chunk in client.completions.create(
            model="rt-local", prompt="1, 2, 3,", max_tokens=60, temperature=0, stream=True
        ):
            if chunk.choices:
                pieces.append(chunk.choices[0].text)
                finish.append(chunk.choices[0].finish_reason)
                started.set()

    runner = threading.Thread(target=stream)
    runner.start()
    try:
        assert started.wait(30)
        with setup.server.http() as admin:
            assert admin.delete("/admin/v1/deployments/rt-gemma").status_code == 204
            names = [d["name"] for d in admin.get("/admin/v1/deployments").json()["data"]]
            assert "rt-gemma" not in names
    finally:
        runner.join(60)
    assert finish[-1] == "length" and len(pieces) >= 30, (finish[-3:], len(pieces))
    assert _wait_gone(second)
    with setup.server.http() as admin:
        assert workers(admin) == {}
    with pytest.raises(openai.NotFoundError):
        _complete(client, "rt-local", False, 4)

"""The response cache end to end: hits, tenant scope, Cache-Control, TTL, streaming
replay, model versions, ledger and metrics, with the bundled model (and the bench's fast
upstream where a model version must change)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import Server, metric, running_server
from tests.e2e.upstreams import fast_upstream

LLM, EMB = "gemma-3-270m", "all-minilm-l6-v2"
TTL_S = 12  # long enough for a slow machine to run a test, short to wait out


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """A real HTTP upstream speaking the OpenAI API (the bench's fast one)."""
    with fast_upstream() as url:
        yield url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("cache")
    config = tmp / "inferplane.yaml"
    config.write_text(
        f"cache:\n  ttl_s: {TTL_S}\n"
        f"  semantic: {{embedding_model: {EMB}, threshold: 0.9}}\n"
        "models:\n"
        f"  - id: {LLM}\n    engine: llamacpp\n    bundled: gemma3-270m-q4-k-m\n"
        "    parallel: 2\n    context_policy: truncate\n"
        "    pricing: {input_per_million: 1.0, output_per_million: 2.0}\n"
        f"  - id: {EMB}\n    engine: sentence_transformers\n    bundled: all-minilm-l6-v2\n"
    )
    with running_server(tmp / "data", config=config) as srv:
        yield srv


def _org_key(server: Server, **key_fields: Any) -> dict[str, Any]:
    with server.http() as admin:
        org = admin.post("/admin/v1/orgs", json={"name": f"org-{time.time_ns()}"}).json()
        team = admin.post("/admin/v1/teams", json={"name": "t", "org_id": org["id"]}).json()
        key = admin.post(
            "/admin/v1/keys", json={"name": "k", "team_id": team["id"], **key_fields}
        ).json()
    return {"org": org["id"], "team": team["id"], **key}


def _another_key(server: Server, team_id: str) -> str:
    with server.http() as admin:
        return str(
            admin.post("/admin/v1/keys", json={"name": "k2", "team_id": team_id}).json()["key"]
        )


def _chat(
    server: Server,
    key: str,
    content: str,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> httpx.Response:
    body = {
        "model": LLM,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 24,
        "temperature": 0,
        **params,
    }
    with server.http(key) as http:
        resp = http.post("/v1/chat/completions", json=body, headers=headers or {})
    assert resp.status_code == 200, resp.text
    return resp


def _answer(resp: httpx.Response) -> str:
    return str(resp.json()["choices"][0]["message"]["content"])


def _usage(server: Server, key_id: str) -> dict[str, Any]:
    with server.http() as admin:
        (row,) = admin.get("/admin/v1/usage", params={"key_id": key_id}).json()["data"]
    return dict(row)


def test_a_repeated_deterministic_request_is_a_free_fast_hit(server: Server) -> None:
    key = _org_key(server)
    body = {
        "model": LLM,
        "messages": [{"role": "user", "content": "Tell me a long story about a dragon."}],
        "max_tokens": 48,
        "temperature": 0,
    }
    with server.http(key["key"]) as http:  # one connection: both are timed alike
        http.get("/v1/models")
        started = time.perf_counter()
        miss = http.post("/v1/chat/completions", json=body)
        miss_s = time.perf_counter() - started
        hit_times = []
        for _ in range(5):
            started = time.perf_counter()
            hit = http.post("/v1/chat/completions", json=body)
            hit_times.append(time.perf_counter() - started)
        hit_s = statistics.median(hit_times)
    assert miss.status_code == hit.status_code == 200, (miss.text, hit.text)
    assert miss.headers["x-inferplane-cache"] == "miss"
    assert "age" not in miss.headers
    assert hit.headers["x-inferplane-cache"] == "hit"
    assert 0 <= int(hit.headers["age"]) <= TTL_S
    assert _answer(hit) == _answer(miss) and _answer(hit)
    assert hit.json()["usage"] == miss.json()["usage"]
    assert hit.headers["x-inferplane-model-version"] == miss.headers["x-inferplane-model-version"]
    assert hit_s * 20 <= miss_s, (hit_s, miss_s)

    usage = miss.json()["usage"]
    cost = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
    row = _usage(server, key["id"])
    assert (row["requests"], row["cache_hits"]) == (6, 5)
    assert row["cost_usd"] == pytest.approx(cost, abs=1e-12)  # the hit cost nothing
    scope = f"org:{key['org']}"
    labels = {"scope": scope, "model": LLM}
    assert metric(server, "inferplane_cache_requests_total", **labels, result="hit") == 5
    assert metric(server, "inferplane_cache_requests_total", **labels, result="miss") == 1
    saved = metric(server, "inferplane_cache_saved_usd_total", **labels)
    assert saved == pytest.approx(5 * cost, rel=1e-6)
    tokens = metric(server, "inferplane_cache_saved_tokens_total", **labels)
    assert tokens == 5 * usage["total_tokens"]


def test_organisations_never_share_entries(server: Server) -> None:
    first = _org_key(server)
    prompt = "Write a word that rhymes with cat."
    assert _chat(server, first["key"], prompt).headers["x-inferplane-cache"] == "miss"
    # Within the first organisation, another key of it shares the entry (scope: org).
    same_org = _another_key(server, first["team"])
    assert _chat(server, same_org, prompt).headers["x-inferplane-cache"] == "hit"
    # Another organisation asking the same, however it dresses the request, misses
    # (each try from a new organisation: its own first answer would be its own hit).
    for headers, params in [
        ({}, {}),
        ({"x-inferplane-org": first["org"], "x-inferplane-scope": f"org:{first['org']}"}, {}),
        ({"cache-control": "max-stale=3600"}, {"user": first["id"]}),
    ]:
        resp = _chat(server, _org_key(server)["key"], prompt, headers, **params)
        assert resp.headers["x-inferplane-cache"] == "miss", (headers, params)
    # ... while the first organisation's entry was there all along.
    assert _chat(server, same_org, prompt).headers["x-inferplane-cache"] == "hit"


def test_cache_control_and_policy(server: Server) -> None:
    key = _org_key(server)
    prompt = "Say the word blue."
    stored_not = _chat(server, key["key"], prompt, {"cache-control": "no-store"})
    assert stored_not.headers["x-inferplane-cache"] == "miss"
    assert _chat(server, key["key"], prompt).headers["x-inferplane-cache"] == "miss"
    assert _chat(server, key["key"], prompt).headers["x-inferplane-cache"] == "hit"
    # no-cache: answered by the model again, though an entry exists.
    fresh = _chat(server, key["key"], prompt, {"cache-control": "no-cache"})
    assert fresh.headers["x-inferplane-cache"] == "miss"
    assert fresh.headers["x-inferplane-attempts"] == "1"

    # Sampled requests are not cached by default; a seed makes one deterministic.
    sampled = _chat(server, key["key"], prompt, temperature=0.8)
    assert "x-inferplane-cache" not in sampled.headers
    _chat(server, key["key"], prompt, temperature=0.8, seed=7)
    assert _chat(server, key["key"], prompt, temperature=0.8, seed=7).headers[
        "x-inferplane-cache"
    ] == ("hit")
    # A key whose policy is "all" caches sampled requests too; "off" never looks.
    everything = _org_key(server, limits={"cache": "all"})
    _chat(server, everything["key"], prompt, temperature=0.8)
    hit = _chat(server, everything["key"], prompt, temperature=0.8)
    assert hit.headers["x-inferplane-cache"] == "hit"
    never = _org_key(server, limits={"cache": "off"})
    for _ in range(2):
        assert "x-inferplane-cache" not in _chat(server, never["key"], prompt).headers


def test_entries_expire_after_their_ttl(server: Server) -> None:
    key = _org_key(server)
    _chat(server, key["key"], "Count to three.")
    assert _chat(server, key["key"], "Count to three.").headers["x-inferplane-cache"] == "hit"
    time.sleep(TTL_S + 0.5)
    assert _chat(server, key["key"], "Count to three.").headers["x-inferplane-cache"] == "miss"


def test_a_streaming_hit_replays_as_sse(server: Server) -> None:
    key = _org_key(server)
    client = server.client(key["key"])
    messages: Any = [{"role": "user", "content": "List two animals."}]

    def stream() -> tuple[str, str, Any, list[Any]]:
        with client.chat.completions.with_streaming_response.create(
            model=LLM,
            messages=messages,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        ) as resp:
            chunks = list(resp.parse())
            status = resp.headers["x-inferplane-cache"]
            kind = resp.headers["content-type"]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert kind.startswith("text/event-stream")
        return status, text, chunks[-1].usage, chunks

    first_status, first_text, first_usage, _ = stream()
    status, text, usage, chunks = stream()
    assert (first_status, status) == ("miss", "hit")
    assert text == first_text and text
    assert usage == first_usage
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    # A non-streaming request shares the entry.
    plain = client.chat.completions.with_raw_response.create(
        model=LLM, messages=messages, max_tokens=24, temperature=0
    )
    assert plain.headers["x-inferplane-cache"] == "hit"
    assert plain.parse().choices[0].message.content == first_text


def test_a_new_model_version_misses(server: Server, upstream: str) -> None:
    with server.http() as admin:
        created = admin.post(
            "/admin/v1/deployments",
            json={
                "name": "versioned",
                "alias": "versioned-chat",
                "engine": "openai_compatible",
                "base_url": upstream,
                "model": "fast-v1",
            },
        )
    assert created.status_code == 201, created.text
    key = _org_key(server)

    def ask() -> httpx.Response:
        with server.http(key["key"]) as http:
            resp = http.post(
                "/v1/chat/completions",
                json={
                    "model": "versioned-chat",
                    "messages": [{"role": "user", "content": "hi"}],
                    "temperature": 0,
                },
            )
        assert resp.status_code == 200, resp.text
        return resp

    assert ask().headers["x-inferplane-cache"] == "miss"
    hit = ask()
    assert hit.headers["x-inferplane-cache"] == "hit"
    with server.http() as admin:
        changed = admin.patch("/admin/v1/deployments/versioned", json={"model": "fast-v2"})
    assert changed.status_code == 200, changed.text
    after = ask()
    assert after.headers["x-inferplane-cache"] == "miss"
    assert after.headers["x-inferplane-model-version"] != hit.headers["x-inferplane-model-version"]
    assert ask().headers["x-inferplane-cache"] == "hit"


def test_a_paraphrase_hits_the_semantic_cache_and_an_unrelated_prompt_does_not(
    server: Server,
) -> None:
    key = _org_key(server)
    first = _chat(server, key["key"], "What is the capital of France?")
    assert first.headers["x-inferplane-cache"] == "miss"
    para = _chat(server, key["key"], "Which city is the capital of France?")
    assert para.headers["x-inferplane-cache"] == "semantic-hit"
    assert 0.9 <= float(para.headers["x-inferplane-cache-score"]) < 1.0
    assert _answer(para) == _answer(first)
    # Near in wording, another question (similarity about 0.66), and an unrelated one.
    for other in ("What is the capital of Germany?", "How do I bake sourdough bread?"):
        resp = _chat(server, key["key"], other)
        assert resp.headers["x-inferplane-cache"] == "miss", other
        assert "x-inferplane-cache-score" not in resp.headers
    # The paraphrase from another organisation misses; so does another system prompt.
    assert _chat(server, _org_key(server)["key"], "Which city is the capital of France?").headers[
        "x-inferplane-cache"
    ] == ("miss")
    with server.http(key["key"]) as http:
        resp = http.post(
            "/v1/chat/completions",
            json={
                "model": LLM,
                "messages": [
                    {"role": "system", "content": "Answer in French."},
                    {"role": "user", "content": "What is the capital of France?"},
                ],
                "max_tokens": 24,
                "temperature": 0,
            },
        )
    assert resp.headers["x-inferplane-cache"] == "miss"
    # Another max_tokens is another answer: it misses too.
    assert _chat(server, key["key"], "Which city is the capital of France?", max_tokens=8).headers[
        "x-inferplane-cache"
    ] == ("miss")
    assert (
        metric(
            server,
            "inferplane_cache_requests_total",
            scope=f"org:{key['org']}",
            model=LLM,
            result="semantic-hit",
        )
        == 1
    )


def test_replicas_share_exact_and_semantic_entries_through_redis_and_a_fault_is_a_miss(
    tmp_path: Path, upstream: str
) -> None:
    from tests.e2e.services import postgres, redis_server

    config = tmp_path / "c.yaml"
    config.write_text(
        "server: {replicas: 2, redis_failure_mode: local}\n"
        "cache: {backend: redis, ttl_s: 60, semantic: {embedding_model: " + EMB + "}}\n"
        "models:\n  - id: shared-chat\n    deployments:\n"
        f"      - {{name: fast, engine: openai_compatible, base_url: '{upstream}', model: f}}\n"
        f"  - id: {EMB}\n    engine: sentence_transformers\n    bundled: all-minilm-l6-v2\n"
    )
    with postgres() as db, redis_server() as rd:
        env = {"INFERPLANE_DATABASE_URL": db, "INFERPLANE_REDIS_URL": rd.url}
        with (
            running_server(tmp_path / "a", config=config, env=env) as a,
            running_server(tmp_path / "b", config=config, env=env) as b,
        ):
            with a.http() as admin:
                key = admin.post("/admin/v1/keys", json={"name": "shared"}).json()["key"]

            def ask(server: Server, content: str = "shared?", store: bool = True) -> str:
                with server.http(key) as http:
                    resp = http.post(
                        "/v1/chat/completions",
                        json={
                            "model": "shared-chat",
                            "messages": [{"role": "user", "content": content}],
                            "temperature": 0,
                        },
                        headers={} if store else {"cache-control": "no-store"},
                    )
                assert resp.status_code == 200, resp.text
                return resp.headers["x-inferplane-cache"]

            def until(server: Server, content: str, want: str) -> None:
                # The store step runs after the answer, and reaches the other replica
                # through Redis: poll (without storing, so only the first replica's
                # entry can answer).
                deadline = time.monotonic() + 10
                while (got := ask(server, content, store=False)) != want:
                    assert time.monotonic() < deadline, got
                    time.sleep(0.05)

            assert ask(a) == "miss"
            until(b, "shared?", "hit")
            assert ask(a, "What is the capital of France?") == "miss"
            until(b, "Which city is the capital of France?", "semantic-hit")
            rd.stop()
            down = ask(b)
            assert down == "miss"
            assert "Redis unreachable" in b.text()


def test_a_chat_too_long_for_the_context_loses_its_oldest_turns(server: Server) -> None:
    key = _org_key(server)
    turn = "Here is a fairly long remark about the weather, the sea and the hills. " * 4
    messages = [{"role": "system", "content": "You are brief."}]
    for i in range(40):  # about 2,600 tokens: more than the 2,048-token context
        messages += [
            {"role": "user", "content": f"{i}: {turn}"},
            {"role": "assistant", "content": "Noted."},
        ]
    messages.append({"role": "user", "content": "Say yes."})
    with server.http(key["key"]) as http:
        resp = http.post(
            "/v1/chat/completions",
            json={"model": LLM, "messages": messages, "max_tokens": 8, "temperature": 0},
        )
    assert resp.status_code == 200, resp.text
    dropped = int(resp.headers["x-inferplane-context-truncated"])
    assert 0 < dropped < 80
    usage = resp.json()["usage"]
    assert usage["prompt_tokens"] + 8 <= 2048

"""Complexity routing end to end: the bundled MiniLM as the alias's classifier, two
deployments (one tagged `large`) on a real upstream, the official `openai` client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.server import Server, metric, running_server
from tests.e2e.upstreams import fast_upstream

EMB = "all-minilm-l6-v2"

COMPLEX = [
    "Derive the average-case time complexity of quicksort and prove it formally.",
    "Write a thread-safe LRU cache with expiry in Python and explain the design trade-offs.",
    "Plan the migration of a monolithic billing system to microservices, with risks and rollout.",
    "Compare PostgreSQL and Cassandra for a write-heavy time-series workload; propose a schema.",
]
SIMPLE = [
    "hello there",
    "What's the capital of Spain?",
    "How many days are in a week?",
    "Translate 'good morning' to French.",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with fast_upstream() as url:
        yield from _server(tmp_path_factory, url)


def _server(tmp_path_factory: pytest.TempPathFactory, url: str) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("complexity")
    config = tmp / "inferplane.yaml"
    config.write_text(
        "models:\n"
        f"  - id: {EMB}\n    engine: sentence_transformers\n    bundled: all-minilm-l6-v2\n"
        "  - id: auto\n"
        "    complexity_tokens: 300\n"
        f"    complexity_classifier: {{embedding_model: {EMB}}}\n"
        "    deployments:\n"
        "      - name: small-model\n        engine: openai_compatible\n"
        f"        base_url: {url}\n        model: small\n"
        "      - name: large-model\n        engine: openai_compatible\n"
        f"        base_url: {url}\n        model: large\n        tags: [large]\n"
    )
    with running_server(tmp / "data", config=config) as srv:
        yield srv


def _served_by(server: Server, prompt: str, stream: bool = False) -> str:
    client = server.client()
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": prompt},
    ]
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=20,
        stream=stream,
    )
    if stream:
        assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        assert raw.parse().choices[0].message.content
    return raw.headers["x-inferplane-deployment"]


def test_the_classifier_sends_complex_requests_to_the_large_deployment(server: Server) -> None:
    large_before = metric(
        server, "inferplane_route_complexity_total", model="auto", verdict="large"
    )
    small_before = metric(
        server, "inferplane_route_complexity_total", model="auto", verdict="small"
    )
    assert [_served_by(server, p) for p in COMPLEX] == ["large-model"] * len(COMPLEX)
    assert [_served_by(server, p, stream=True) for p in SIMPLE] == ["small-model"] * len(SIMPLE)
    large = metric(server, "inferplane_route_complexity_total", model="auto", verdict="large")
    small = metric(server, "inferplane_route_complexity_total", model="auto", verdict="small")
    assert (large - large_before, small - small_before) == (len(COMPLEX), len(SIMPLE))


def test_a_long_prompt_goes_large_by_the_token_threshold_alone(server: Server) -> None:
    # Judged simple by meaning, but past `complexity_tokens`: either rule suffices.
    assert _served_by(server, "hello there " * 200) == "large-model"
    assert _served_by(server, "hello there") == "small-model"

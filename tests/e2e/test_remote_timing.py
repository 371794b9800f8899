"""Time to first token is measured once, in the pipeline, for every engine: a remote
deployment's requests fill the TTFT and inter-token histograms and the ledger's
`ttft_ms` as a local model's do (before, only local models and cache replays did)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from tests.e2e.server import Server, metric, running_server
from tests.e2e.upstreams import fast_upstream


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("remote-timing")
    with fast_upstream() as url:
        config = tmp / "inferplane.yaml"
        config.write_text(
            f"""
models:
  - id: chat
    deployments:
      - {{name: fast, engine: openai_compatible, base_url: "{url}", model: fast}}
"""
        )
        with running_server(tmp / "data", config=config) as srv:
            yield srv


def test_remote_deployments_record_time_to_first_token(server: Server) -> None:
    first = metric(server, "inferplane_time_to_first_token_seconds_count", model="chat")
    gaps = metric(server, "inferplane_inter_token_latency_seconds_count", model="chat")
    client = server.client()
    messages = [{"role": "user", "content": "hi"}]
    plain = client.chat.completions.with_raw_response.create(model="chat", messages=messages)
    with client.chat.completions.with_streaming_response.create(
        model="chat", messages=messages, stream=True
    ) as streamed:
        pieces = [c for c in streamed.parse() if c.choices and c.choices[0].delta.content]
    assert len(pieces) == 20  # the fast upstream's 20 chunks
    assert metric(server, "inferplane_time_to_first_token_seconds_count", model="chat") == first + 2
    # The stream's 19 gaps between its 20 pieces; the plain answer is one piece.
    assert metric(server, "inferplane_inter_token_latency_seconds_count", model="chat") == gaps + 19
    ids = [plain.headers["x-request-id"], streamed.headers["x-request-id"]]
    with server.http() as http:
        assert http.get("/admin/v1/usage").status_code == 200  # flushes the ledger
    with sqlite3.connect(server.data_dir / "inferplane.db") as db:
        rows = db.execute(
            "SELECT deployment, ttft_ms, latency_ms FROM usage_records WHERE request_id IN (?, ?)",
            ids,
        ).fetchall()
    assert len(rows) == 2
    for deployment, ttft_ms, latency_ms in rows:
        assert deployment == "fast"
        assert ttft_ms is not None and 0 < ttft_ms <= latency_ms

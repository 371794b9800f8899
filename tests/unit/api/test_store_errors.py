"""A store gone away, as a caller sees it: the answer and the log line the API gave when
it mapped SQLAlchemy's errors itself, now from the store's own translation."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from inferplane.api.errors import install_error_handlers
from inferplane.store.database import open_database, sqlite_url
from inferplane.tenancy.schemas import OrgCreate
from inferplane.tenancy.store import TenancyStore


def test_a_store_gone_away_answers_503_store_unavailable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    engine = open_database(sqlite_url(folder))
    store = TenancyStore(engine)
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/orgs")
    def create_org() -> dict[str, object]:
        return store.create_org(OrgCreate(name="acme"))

    client = TestClient(app, raise_server_exceptions=False)
    assert client.post("/orgs").status_code == 200
    taken = client.post("/orgs")
    assert taken.status_code == 400 and taken.json()["error"]["param"] == "name"
    engine.dispose()
    folder.rename(tmp_path / "moved")
    with caplog.at_level(logging.WARNING, logger="inferplane.api.errors"):
        resp = client.post("/orgs")
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "5"
    assert resp.json() == {
        "error": {
            "message": "The store is unreachable; try again shortly.",
            "type": "server_error",
            "param": None,
            "code": "store_unavailable",
        }
    }
    assert [r.getMessage() for r in caplog.records] == [
        "request -: store unavailable: OperationalError"
    ]
    engine.dispose()

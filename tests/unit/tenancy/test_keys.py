from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from inferplane.errors import AuthenticationFailed, InvalidRequest, NotFound
from inferplane.store.database import open_database, sqlite_url
from inferplane.tenancy.keys import ADMIN_KEY_ID, KeyService, hash_key


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[KeyService]:
    engine = open_database(sqlite_url(tmp_path))
    service = KeyService(engine)
    service.load()
    yield service
    engine.dispose()


def test_create_authenticate_revoke(keys: KeyService) -> None:
    created = keys.create("team", [])
    principal = keys.authenticate(f"Bearer {created['key']}")
    assert principal.key_id == created["id"] and not principal.is_admin
    keys.revoke(created["id"])
    with pytest.raises(AuthenticationFailed):
        keys.authenticate(f"Bearer {created['key']}")
    listed = {k["id"]: k for k in keys.list()}
    assert listed[created["id"]]["revoked_at"] is not None
    assert "key" not in listed[created["id"]]


def test_only_the_hash_is_stored(keys: KeyService) -> None:
    created = keys.create("team", [])
    with keys.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM api_keys")).all()
    flat = repr(rows)
    assert created["key"] not in flat
    assert hash_key(created["key"]) in flat


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Token abc", "Bearer nope"])
def test_bad_headers(keys: KeyService, header: str | None) -> None:
    with pytest.raises(AuthenticationFailed):
        keys.authenticate(header)


def test_admin_key_from_env_and_generated(keys: KeyService) -> None:
    assert keys.ensure_admin_key("chosen-secret") is None
    assert keys.authenticate("Bearer chosen-secret").is_admin
    # Restarting without the env var keeps the stored admin key and prints nothing.
    assert keys.ensure_admin_key(None) is None
    assert keys.authenticate("bearer chosen-secret").is_admin
    # Rotating replaces it.
    keys.ensure_admin_key("rotated")
    with pytest.raises(AuthenticationFailed):
        keys.authenticate("Bearer chosen-secret")
    with pytest.raises(InvalidRequest):
        keys.revoke(ADMIN_KEY_ID)


def test_first_start_generates_an_admin_key(keys: KeyService) -> None:
    generated = keys.ensure_admin_key(None)
    assert generated is not None and generated.startswith("ipk-")
    assert keys.authenticate(f"Bearer {generated}").is_admin


def test_revoking_unknown_key(keys: KeyService) -> None:
    with pytest.raises(NotFound):
        keys.revoke("key_nope")

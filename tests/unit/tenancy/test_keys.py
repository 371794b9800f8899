from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from inferplane.errors import AuthenticationFailed, InvalidRequest, NotFound
from inferplane.store.database import open_database, sqlite_url
from inferplane.tenancy.schemas import KeyCreate, KeyRotate, KeyUpdate, OrgCreate, TeamCreate
from inferplane.tenancy.secrets import hash_key
from inferplane.tenancy.service import TenancyService
from inferplane.tenancy.store import ADMIN_KEY_ID, TenancyStore


@pytest.fixture
def tenancy(tmp_path: Path) -> Iterator[TenancyService]:
    engine = open_database(sqlite_url(tmp_path))
    service = TenancyService(TenancyStore(engine))
    service.reload()
    yield service
    engine.dispose()


def _create(t: TenancyService, **fields: object) -> dict[str, object]:
    created = t.store.create_key(KeyCreate.model_validate({"name": "k", **fields}))
    t.reload()
    return created


def test_create_authenticate_revoke(tenancy: TenancyService) -> None:
    created = _create(tenancy)
    principal = tenancy.authenticate(f"Bearer {created['key']}")
    assert principal.key_id == created["id"] and not principal.is_admin
    tenancy.store.revoke_key(str(created["id"]))
    tenancy.reload()
    with pytest.raises(AuthenticationFailed):
        tenancy.authenticate(f"Bearer {created['key']}")
    listed = {k["id"]: k for k in tenancy.store.list_keys(None, 50, None)["data"]}
    assert listed[created["id"]]["revoked_at"] is not None
    assert "key" not in listed[created["id"]]


def test_only_the_hash_is_stored(tenancy: TenancyService) -> None:
    created = _create(tenancy)
    with tenancy.store.engine.connect() as conn:
        flat = repr(conn.execute(sa.text("SELECT * FROM api_keys")).all())
    assert str(created["key"]) not in flat
    assert hash_key(str(created["key"])) in flat


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Token abc", "Bearer nope"])
def test_bad_headers(tenancy: TenancyService, header: str | None) -> None:
    with pytest.raises(AuthenticationFailed):
        tenancy.authenticate(header)


def test_admin_key_from_env_and_generated(tenancy: TenancyService) -> None:
    store = tenancy.store
    assert store.ensure_admin_key("chosen-secret") is None
    tenancy.reload()
    assert tenancy.authenticate("Bearer chosen-secret").is_admin
    assert store.ensure_admin_key(None) is None  # a restart without the env var keeps it
    store.ensure_admin_key("rotated")
    tenancy.reload()
    with pytest.raises(AuthenticationFailed):
        tenancy.authenticate("Bearer chosen-secret")
    with pytest.raises(InvalidRequest):
        store.revoke_key(ADMIN_KEY_ID)


def test_first_start_generates_an_admin_key(tenancy: TenancyService) -> None:
    generated = tenancy.store.ensure_admin_key(None)
    tenancy.reload()
    assert generated is not None and generated.startswith("ipk-")
    assert tenancy.authenticate(f"Bearer {generated}").is_admin


def test_unknown_ids(tenancy: TenancyService) -> None:
    with pytest.raises(NotFound):
        tenancy.store.revoke_key("key_nope")
    with pytest.raises(InvalidRequest) as info:
        tenancy.store.create_key(KeyCreate(name="k", team_id="team_nope"))
    assert info.value.param == "team_id"


def test_rotation_keeps_the_old_secret_for_the_grace_period(tenancy: TenancyService) -> None:
    created = _create(tenancy)
    rotated = tenancy.store.rotate_key(str(created["id"]), KeyRotate(grace_seconds=3600))
    tenancy.reload()
    assert rotated["key"] != created["key"] and rotated["id"] == created["id"]
    assert tenancy.authenticate(f"Bearer {rotated['key']}").key_id == created["id"]
    assert tenancy.authenticate(f"Bearer {created['key']}").key_id == created["id"]
    again = tenancy.store.rotate_key(str(created["id"]), KeyRotate(grace_seconds=0))
    tenancy.reload()
    for old in (created["key"], rotated["key"]):
        with pytest.raises(AuthenticationFailed):
            tenancy.authenticate(f"Bearer {old}")
    assert tenancy.authenticate(f"Bearer {again['key']}")


def test_models_expiry_team_and_update(tenancy: TenancyService) -> None:
    org = tenancy.store.create_org(OrgCreate(name="acme"))
    team = tenancy.store.create_team(
        TeamCreate(name="support", org_id=org["id"], limits={"rpm": 5})  # type: ignore[arg-type]
    )
    soon = datetime.now(UTC) + timedelta(days=1)
    created = _create(tenancy, team_id=team["id"], models=["gemma-*"], expires_at=soon)
    principal = tenancy.authenticate(f"Bearer {created['key']}")
    assert principal.team is not None and principal.team.limits.rpm == 5
    assert principal.may_use("gemma-3-270m") and not principal.may_use("all-minilm-l6-v2")
    tenancy.store.update_key(str(created["id"]), KeyUpdate(models=["*"]))
    tenancy.reload()
    assert tenancy.authenticate(f"Bearer {created['key']}").may_use("all-minilm-l6-v2")


def test_past_expiry_and_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        KeyCreate.model_validate({"name": "k", "expires_at": "2001-01-01T00:00:00Z"})
    with pytest.raises(ValidationError):
        KeyCreate.model_validate({"name": "k", "limits": {"rpm": -1}})
    with pytest.raises(ValidationError):
        KeyCreate.model_validate({"name": "k", "colour": "red"})


def test_pagination(tenancy: TenancyService) -> None:
    ids = [_create(tenancy, name=f"k{i}")["id"] for i in range(5)]
    first = tenancy.store.list_keys(None, 2, None)
    assert [k["id"] for k in first["data"]] == ids[:2] and first["next"] == ids[1]
    rest = tenancy.store.list_keys(first["next"], 10, None)
    assert [k["id"] for k in rest["data"]] == ids[2:] and rest["next"] is None

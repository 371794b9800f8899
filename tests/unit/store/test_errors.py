"""The driver's errors, translated at the store boundary, on a real SQLite database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from inferplane.errors import Conflict, InvalidRequest, NotFound
from inferplane.store.database import (
    connect,
    open_database,
    reachable,
    sqlite_url,
    transaction,
)
from inferplane.store.errors import StoreUnavailable, map_db_errors
from inferplane.store.tables import orgs
from inferplane.tenancy.schemas import OrgCreate, TeamCreate, TeamUpdate
from inferplane.tenancy.store import TenancyStore


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = open_database(sqlite_url(tmp_path))
    yield engine
    engine.dispose()


def _insert_org(conn: sa.Connection, org_id: str, name: str | None) -> None:
    conn.execute(orgs.insert().values(id=org_id, name=name, created_at=datetime.now(UTC)))


def test_a_unique_key_taken_is_a_conflict(engine: sa.Engine) -> None:
    with transaction(engine) as conn:
        _insert_org(conn, "org_1", "acme")
    with pytest.raises(Conflict) as info, transaction(engine) as conn:
        _insert_org(conn, "org_2", "acme")
    assert info.value.status == 409 and info.value.code == "conflict"
    assert isinstance(info.value.__cause__, sa.exc.IntegrityError)
    with pytest.raises(Conflict), transaction(engine) as conn:  # a primary key too
        _insert_org(conn, "org_1", "other")
    with connect(engine) as conn:  # both refused inserts were rolled back
        assert conn.execute(sa.select(sa.func.count()).select_from(orgs)).scalar() == 1


def test_the_caller_names_what_a_taken_key_means(engine: sa.Engine) -> None:
    with transaction(engine) as conn:
        _insert_org(conn, "org_1", "acme")
    taken = InvalidRequest("An organization named 'acme' exists.", param="name")
    with pytest.raises(InvalidRequest) as info, transaction(engine, unique=lambda: taken) as conn:
        _insert_org(conn, "org_2", "acme")
    assert info.value is taken


def test_other_integrity_errors_stay_503_as_before(engine: sa.Engine) -> None:
    """Only a unique key means a conflict; a NOT NULL refused is no caller's fault."""
    with pytest.raises(StoreUnavailable) as info, transaction(engine) as conn:
        _insert_org(conn, "org_1", None)
    assert info.value.cause == "IntegrityError"


def test_our_own_errors_pass_through_untouched() -> None:
    err = NotFound("nothing here")
    with pytest.raises(NotFound) as info, map_db_errors():
        raise err
    assert info.value is err


def test_a_store_gone_away_is_unavailable_then_back(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    engine = open_database(sqlite_url(folder))
    store = TenancyStore(engine)
    org = store.create_org(OrgCreate(name="acme"))
    engine.dispose()  # its pooled connections held the file open
    folder.rename(tmp_path / "moved")  # SQLite cannot create a file in a missing folder
    try:
        assert not reachable(engine)
        with pytest.raises(StoreUnavailable) as info:
            store.get_org(org["id"])
        err = info.value
        assert (err.status, err.type, err.code) == (503, "server_error", "store_unavailable")
        assert err.headers == {"Retry-After": "5"}
        assert err.message == "The store is unreachable; try again shortly."
        assert err.cause == "OperationalError"
        assert isinstance(err.__cause__, sa.exc.OperationalError)
        with pytest.raises(StoreUnavailable):
            store.create_org(OrgCreate(name="other"))
    finally:
        (tmp_path / "moved").rename(folder)
    assert reachable(engine)
    assert store.get_org(org["id"])["name"] == "acme"
    engine.dispose()


def test_names_taken_answer_as_the_tenancy_api_always_has(engine: sa.Engine) -> None:
    """Org and team names are unique keys: the constraint answers, with the same 400 as
    the check it replaced; renaming a team onto a taken name answers the same."""
    store = TenancyStore(engine)
    org = store.create_org(OrgCreate(name="acme"))
    with pytest.raises(InvalidRequest) as info:
        store.create_org(OrgCreate(name="acme"))
    assert info.value.status == 400 and info.value.param == "name"
    assert info.value.message == "An organization named 'acme' exists."
    team = store.create_team(TeamCreate(org_id=org["id"], name="red"))
    other = store.create_team(TeamCreate(org_id=org["id"], name="blue"))
    for attempt in (
        lambda: store.create_team(TeamCreate(org_id=org["id"], name="red")),
        lambda: store.update_team(other["id"], TeamUpdate(name="red")),
    ):
        with pytest.raises(InvalidRequest) as info:
            attempt()
        assert info.value.message == "The organization has a team 'red'."
        assert info.value.param == "name"
    assert store.get_team(other["id"])["name"] == "blue"
    second = store.create_org(OrgCreate(name="second"))  # names are unique per org
    assert store.create_team(TeamCreate(org_id=second["id"], name="red"))["id"] != team["id"]
    with pytest.raises(InvalidRequest) as info:
        store.create_team(TeamCreate(org_id="org_missing", name="x"))
    assert info.value.param == "org_id"

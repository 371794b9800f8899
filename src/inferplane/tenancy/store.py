"""Tenancy in the database: orgs, teams and keys (synchronous; call from a thread)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa

from inferplane.errors import InvalidRequest, NotFound
from inferplane.limits.policy import Budget, Limits
from inferplane.store.database import connect, db_time, transaction
from inferplane.store.tables import api_keys, orgs, teams, usage_records
from inferplane.tenancy.metadata import attached, data_class_of, policy_of
from inferplane.tenancy.records import Credential, KeyRecord, Principal, Snapshot, TeamRecord
from inferplane.tenancy.schemas import (
    KeyCreate,
    KeyRotate,
    KeyUpdate,
    OrgCreate,
    TeamCreate,
    TeamUpdate,
)
from inferplane.tenancy.secrets import generate_key, hash_key, new_id

ADMIN_KEY_ID = "key_admin"
MAX_PAGE = 100


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything is written in UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _budget(raw: dict[str, Any] | None) -> Budget | None:
    return Budget.model_validate(raw) if raw else None


def _epoch(value: datetime | None) -> int | None:
    value = utc(value)
    return None if value is None else int(value.timestamp())


def _page(rows: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    more = len(rows) > limit
    rows = rows[:limit]
    return {"object": "list", "data": rows, "next": rows[-1]["id"] if more else None}


def _org_view(row: sa.Row[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "organization",
        "name": row.name,
        "created_at": _epoch(row.created_at),
    }


def _team_view(row: sa.Row[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "team",
        "name": row.name,
        "org_id": row.org_id,
        "limits": row.limits,
        "metadata": row.metadata,
        "created_at": _epoch(row.created_at),
    }


def _key_view(row: sa.Row[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "api_key",
        "name": row.name,
        "prefix": row.prefix,
        "role": row.role,
        "team_id": row.team_id,
        "models": row.models,
        "limits": row.limits,
        "budget": row.budget,
        "priority": row.priority,
        "metadata": row.metadata,
        "expires_at": _epoch(row.expires_at),
        "created_at": _epoch(row.created_at),
        "updated_at": _epoch(row.updated_at),
        "revoked_at": _epoch(row.revoked_at),
    }


class TenancyStore:
    def __init__(self, engine: sa.Engine):
        self.engine = engine

    # -- snapshot -----------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with connect(self.engine) as conn:
            team_rows = conn.execute(sa.select(teams)).all()
            key_rows = conn.execute(sa.select(api_keys).where(api_keys.c.revoked_at.is_(None)))
            team_map = {
                t.id: TeamRecord(
                    t.id,
                    t.org_id,
                    t.name,
                    Limits.model_validate(t.limits),
                    _budget(t.budget),
                    t.weight,
                    data_class_of(t.metadata),
                    policy_of(t.metadata),
                )
                for t in team_rows
            }
            creds: dict[str, Credential] = {}
            for k in key_rows:
                record = KeyRecord(
                    id=k.id,
                    name=k.name,
                    role=k.role,
                    team_id=k.team_id,
                    models=tuple(k.models) if k.models is not None else None,
                    limits=Limits.model_validate(k.limits),
                    priority=k.priority,
                    expires_at=utc(k.expires_at),
                    budget=_budget(k.budget),
                    data_class=data_class_of(k.metadata),
                    policy=policy_of(k.metadata),
                )
                principal = Principal(record, team_map.get(k.team_id) if k.team_id else None)
                creds[k.key_hash] = Credential(principal, record.expires_at)
                if k.previous_key_hash and k.previous_expires_at:
                    grace_end = utc(k.previous_expires_at)
                    if record.expires_at is not None and grace_end is not None:
                        grace_end = min(grace_end, record.expires_at)
                    creds[k.previous_key_hash] = Credential(principal, grace_end)
        return Snapshot(MappingProxyType(creds))

    # -- orgs and teams -----------------------------------------------------------------

    def create_org(self, cmd: OrgCreate) -> dict[str, Any]:
        org_id = new_id("org")
        taken = partial(InvalidRequest, f"An organization named '{cmd.name}' exists.", param="name")
        with transaction(self.engine, unique=taken) as conn:
            conn.execute(
                orgs.insert().values(id=org_id, name=cmd.name, created_at=datetime.now(UTC))
            )
        return self.get_org(org_id)

    def get_org(self, org_id: str) -> dict[str, Any]:
        with connect(self.engine) as conn:
            row = conn.execute(sa.select(orgs).where(orgs.c.id == org_id)).first()
        if row is None:
            raise NotFound(f"No organization with id '{org_id}'.", param="id", code="org_not_found")
        return _org_view(row)

    def list_orgs(self, after: str | None, limit: int) -> dict[str, Any]:
        return _page([_org_view(r) for r in self._list(orgs, after, limit)], limit)

    def create_team(self, cmd: TeamCreate) -> dict[str, Any]:
        team_id = new_id("team")
        with transaction(self.engine, unique=partial(_team_taken, cmd.name)) as conn:
            if not conn.execute(sa.select(orgs.c.id).where(orgs.c.id == cmd.org_id)).first():
                raise InvalidRequest(f"No organization '{cmd.org_id}'.", param="org_id")
            conn.execute(
                teams.insert().values(
                    id=team_id,
                    org_id=cmd.org_id,
                    name=cmd.name,
                    limits=cmd.limits.model_dump(exclude_none=True),
                    budget=cmd.budget.model_dump() if cmd.budget else None,
                    weight=cmd.weight,
                    metadata=attached(cmd, {}),
                    created_at=datetime.now(UTC),
                )
            )
        return self.get_team(team_id)

    def get_team(self, team_id: str) -> dict[str, Any]:
        with connect(self.engine) as conn:
            row = conn.execute(sa.select(teams).where(teams.c.id == team_id)).first()
        if row is None:
            raise NotFound(f"No team with id '{team_id}'.", param="id", code="team_not_found")
        return _team_view(row)

    def list_teams(self, after: str | None, limit: int, org_id: str | None) -> dict[str, Any]:
        where = [teams.c.org_id == org_id] if org_id else []
        return _page([_team_view(r) for r in self._list(teams, after, limit, where)], limit)

    def update_team(self, team_id: str, cmd: TeamUpdate) -> dict[str, Any]:
        current = self.get_team(team_id)
        values: dict[str, Any] = {}
        if cmd.name is not None:
            values["name"] = cmd.name
        if cmd.limits is not None:
            values["limits"] = cmd.limits.model_dump(exclude_none=True)
        metadata = attached(cmd, current["metadata"])
        if metadata is not None:
            values["metadata"] = metadata
        if "budget" in cmd.model_fields_set:
            values["budget"] = cmd.budget.model_dump() if cmd.budget else None
        if cmd.weight is not None:
            values["weight"] = cmd.weight
        if values:  # only a new name can take a unique key
            taken = partial(_team_taken, cmd.name) if cmd.name is not None else None
            with transaction(self.engine, unique=taken) as conn:
                conn.execute(teams.update().where(teams.c.id == team_id).values(**values))
        return self.get_team(team_id)

    # -- keys ---------------------------------------------------------------------------

    def create_key(self, cmd: KeyCreate) -> dict[str, Any]:
        secret = generate_key()
        key_id = new_id("key")
        with transaction(self.engine) as conn:
            if (
                cmd.team_id is not None
                and not conn.execute(sa.select(teams.c.id).where(teams.c.id == cmd.team_id)).first()
            ):
                raise InvalidRequest(f"No team '{cmd.team_id}'.", param="team_id")
            conn.execute(
                api_keys.insert().values(
                    id=key_id,
                    name=cmd.name,
                    key_hash=hash_key(secret),
                    prefix=secret[:8],
                    role=cmd.role,
                    team_id=cmd.team_id,
                    models=cmd.models,
                    limits=cmd.limits.model_dump(exclude_none=True),
                    budget=cmd.budget.model_dump() if cmd.budget else None,
                    metadata=attached(cmd, {}),
                    priority=cmd.priority,
                    expires_at=cmd.expires_at,
                    created_at=datetime.now(UTC),
                )
            )
        return {**self.get_key(key_id), "key": secret}

    def get_key(self, key_id: str) -> dict[str, Any]:
        with connect(self.engine) as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None:
            raise NotFound(f"No API key with id '{key_id}'.", param="id", code="key_not_found")
        return _key_view(row)

    def list_keys(self, after: str | None, limit: int, team_id: str | None) -> dict[str, Any]:
        where = [api_keys.c.team_id == team_id] if team_id else []
        return _page([_key_view(r) for r in self._list(api_keys, after, limit, where)], limit)

    def update_key(self, key_id: str, cmd: KeyUpdate) -> dict[str, Any]:
        self._live_key(key_id)
        metadata = attached(cmd, self.get_key(key_id)["metadata"])
        if key_id == ADMIN_KEY_ID and cmd.expires_at is not None:
            raise InvalidRequest(
                "The bootstrap admin key cannot expire; rotate it with INFERPLANE_ADMIN_KEY.",
                param="expires_at",
            )
        values: dict[str, Any] = {
            k: v
            for k, v in cmd.model_dump(exclude_unset=True).items()
            if k not in ("limits", "budget", "metadata", "policy")
        }
        if metadata is not None:
            values["metadata"] = metadata
        if cmd.limits is not None:
            values["limits"] = cmd.limits.model_dump(exclude_none=True)
        if "budget" in cmd.model_fields_set:
            values["budget"] = cmd.budget.model_dump() if cmd.budget else None
        values["updated_at"] = datetime.now(UTC)
        with transaction(self.engine) as conn:
            conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(**values))
        return self.get_key(key_id)

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        if key_id == ADMIN_KEY_ID:
            raise InvalidRequest(
                "The admin key cannot be revoked; rotate it with INFERPLANE_ADMIN_KEY.",
                param="id",
            )
        self.get_key(key_id)
        with transaction(self.engine) as conn:
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        return {**self.get_key(key_id), "deleted": True}

    def rotate_key(self, key_id: str, cmd: KeyRotate) -> dict[str, Any]:
        row = self._live_key(key_id)
        secret = generate_key()
        now = datetime.now(UTC)
        with transaction(self.engine) as conn:
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id)
                .values(
                    key_hash=hash_key(secret),
                    prefix=secret[:8],
                    previous_key_hash=row.key_hash if cmd.grace_seconds else None,
                    previous_expires_at=now + timedelta(seconds=cmd.grace_seconds),
                    updated_at=now,
                )
            )
        return {**self.get_key(key_id), "key": secret}

    def ensure_admin_key(self, secret: str | None) -> str | None:
        """Install the admin key. Returns a newly generated secret to print once, or None.

        With `secret` given (INFERPLANE_ADMIN_KEY) its hash replaces the stored one.
        Without, a key is generated only if there is no admin key yet. Either way the
        bootstrap key works after a restart: it cannot expire (an expiry stored by an
        older version is cleared) and cannot be revoked.
        """
        with transaction(self.engine) as conn:
            existing = conn.execute(
                sa.select(api_keys.c.key_hash).where(api_keys.c.id == ADMIN_KEY_ID)
            ).first()
            if secret is None and existing is not None:
                conn.execute(
                    api_keys.update()
                    .where(api_keys.c.id == ADMIN_KEY_ID)
                    .values(expires_at=None, revoked_at=None, role="admin")
                )
                return None
            generated = None
            if secret is None:
                secret = generated = generate_key()
            # The environment's key always works after a restart: whatever an admin did
            # to the stored row (an expiry, a rotation), it is re-established here.
            values = {
                "key_hash": hash_key(secret),
                "prefix": secret[:8],
                "revoked_at": None,
                "previous_key_hash": None,
                "expires_at": None,
                "role": "admin",
            }
            if existing is None:
                conn.execute(
                    api_keys.insert().values(
                        id=ADMIN_KEY_ID,
                        name="admin",
                        limits={},
                        metadata={},
                        created_at=datetime.now(UTC),
                        **values,
                    )
                )
            else:
                conn.execute(
                    api_keys.update().where(api_keys.c.id == ADMIN_KEY_ID).values(**values)
                )
        return generated

    # -- helpers ------------------------------------------------------------------------

    def _live_key(self, key_id: str) -> sa.Row[Any]:
        with connect(self.engine) as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None or row.revoked_at is not None:
            raise NotFound(
                f"No active API key with id '{key_id}'.", param="id", code="key_not_found"
            )
        return row

    def _list(
        self, table: sa.Table, after: str | None, limit: int, where: list[Any] | None = None
    ) -> list[sa.Row[Any]]:
        query = sa.select(table).order_by(table.c.id).limit(min(limit, MAX_PAGE) + 1)
        for clause in where or []:
            query = query.where(clause)
        if after:
            query = query.where(table.c.id > after)
        with connect(self.engine) as conn:
            return list(conn.execute(query))


def spent_since(engine: sa.Engine, column: str, scope_id: str, since: datetime) -> int:
    """nano-USD recorded in the ledger for one key or team since `since`."""
    col = usage_records.c[column]
    query = sa.select(sa.func.coalesce(sa.func.sum(usage_records.c.cost_nusd), 0)).where(
        col == scope_id, usage_records.c.created_at >= db_time(engine, since)
    )
    with connect(engine) as conn:
        return int(conn.execute(query).scalar_one())


def _team_taken(name: str) -> InvalidRequest:
    """A team name is unique within its organization (the key that refused it)."""
    return InvalidRequest(f"The organization has a team '{name}'.", param="name")

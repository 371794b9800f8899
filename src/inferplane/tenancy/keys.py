"""API keys: generated with 256 bits of entropy, stored only as sha256, checked in memory.

The data plane never reads the database: `KeyService` keeps an in-memory snapshot
(hash -> principal) that is replaced whenever a key is created or revoked, so a revoked
key stops working with the response that revoked it. sha256 (not a slow password hash)
is right here: the secrets are random, not user-chosen, and a lookup costs one hash.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa

from inferplane.errors import AuthenticationFailed, InvalidRequest, NotFound
from inferplane.store.tables import api_keys

KEY_PREFIX = "ipk-"
ADMIN_KEY_ID = "key_admin"


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    name: str
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _epoch(value: datetime | None) -> int | None:
    if value is None:
        return None
    # SQLite returns naive datetimes; everything is written in UTC.
    return int(value.replace(tzinfo=value.tzinfo or UTC).timestamp())


def _row_to_dict(row: sa.Row[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "api_key",
        "name": row.name,
        "prefix": row.prefix,
        "scopes": row.scopes.split(),
        "created_at": _epoch(row.created_at),
        "revoked_at": _epoch(row.revoked_at),
    }


class KeyService:
    """Creates, lists and revokes keys; authenticates bearer secrets without I/O."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self._snapshot: MappingProxyType[str, Principal] = MappingProxyType({})

    def load(self) -> None:
        """Rebuild the in-memory snapshot from the store (start-up and after changes)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(api_keys).where(api_keys.c.revoked_at.is_(None)))
            snap = {r.key_hash: Principal(r.id, r.name, frozenset(r.scopes.split())) for r in rows}
        self._snapshot = MappingProxyType(snap)

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthenticationFailed(
                "Missing API key. Send 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        scheme, _, secret = authorization.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise AuthenticationFailed("Malformed Authorization header; expected 'Bearer <key>'.")
        # The lookup is by digest, so its timing tells nothing about the secret.
        principal = self._snapshot.get(hash_key(secret))
        if principal is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return principal

    def ensure_admin_key(self, secret: str | None) -> str | None:
        """Install the admin key. Returns a newly generated secret to print once, or None.

        With `secret` given (INFERPLANE_ADMIN_KEY) its hash replaces the stored one.
        Without, a key is generated only if there is no admin key yet.
        """
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            existing = conn.execute(
                sa.select(api_keys.c.key_hash).where(api_keys.c.id == ADMIN_KEY_ID)
            ).first()
            if secret is None and existing is not None:
                return None
            generated = None
            if secret is None:
                secret = generated = generate_key()
            values = {"key_hash": hash_key(secret), "prefix": secret[:8], "revoked_at": None}
            if existing is None:
                conn.execute(
                    api_keys.insert().values(
                        id=ADMIN_KEY_ID, name="admin", scopes="admin", created_at=now, **values
                    )
                )
            else:
                conn.execute(
                    api_keys.update().where(api_keys.c.id == ADMIN_KEY_ID).values(**values)
                )
        self.load()
        return generated

    def create(self, name: str, scopes: list[str]) -> dict[str, Any]:
        secret = generate_key()
        key_id = "key_" + secrets.token_hex(12)
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(
                api_keys.insert().values(
                    id=key_id,
                    name=name,
                    key_hash=hash_key(secret),
                    prefix=secret[:8],
                    scopes=" ".join(sorted(set(scopes))),
                    created_at=now,
                )
            )
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).one()
        self.load()
        return {**_row_to_dict(row), "key": secret}

    def list(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at))
            return [_row_to_dict(r) for r in rows]

    def revoke(self, key_id: str) -> dict[str, Any]:
        if key_id == ADMIN_KEY_ID:
            raise InvalidRequest(
                "The admin key cannot be revoked; rotate it with INFERPLANE_ADMIN_KEY.",
                param="id",
            )
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
            if row is None:
                raise NotFound(f"No API key with id '{key_id}'.", param="id", code="key_not_found")
            if row.revoked_at is None:
                conn.execute(
                    api_keys.update()
                    .where(api_keys.c.id == key_id)
                    .values(revoked_at=datetime.now(UTC))
                )
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).one()
        self.load()
        return {**_row_to_dict(row), "deleted": True}

"""The control plane's tables (SQLAlchemy Core). Migrations in `migrations/` create them."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    # sha256 of the secret; the secret itself is never stored.
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    # First characters of the secret, to tell keys apart in listings.
    sa.Column("prefix", sa.String(16), nullable=False),
    # Space-separated scopes; "admin" may use /admin/v1.
    sa.Column("scopes", sa.String(200), nullable=False, server_default=""),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)

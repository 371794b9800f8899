"""The control plane's tables (SQLAlchemy Core). Migrations in `migrations/` create them."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

orgs = sa.Table(
    "orgs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

teams = sa.Table(
    "teams",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("limits", sa.JSON, nullable=False),
    sa.Column("budget", sa.JSON, nullable=True),
    sa.Column("weight", sa.Float, nullable=False, server_default="1"),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("org_id", "name"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    # Ids sort by creation time (a hex timestamp prefix), which makes them cursors.
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    # sha256 of the secret; the secret itself is never stored.
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    # First characters of the secret, to tell keys apart in listings.
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("role", sa.String(16), nullable=False, server_default="user"),
    sa.Column("team_id", sa.String(40), sa.ForeignKey("teams.id"), nullable=True),
    # Model ids or glob patterns the key may use; NULL: every model.
    sa.Column("models", sa.JSON, nullable=True),
    sa.Column("limits", sa.JSON, nullable=False),
    sa.Column("budget", sa.JSON, nullable=True),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("priority", sa.String(16), nullable=False, server_default="interactive"),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    # After a rotation the old secret keeps working until previous_expires_at.
    sa.Column("previous_key_hash", sa.String(64), nullable=True),
    sa.Column("previous_expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)

# One row per price version: usage rows point at the version that priced them.
prices = sa.Table(
    "prices",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(128), nullable=False, index=True),
    sa.Column("input_per_million", sa.Float, nullable=False),
    sa.Column("output_per_million", sa.Float, nullable=False),
    sa.Column("per_request", sa.Float, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# The usage ledger: one row per admitted request, keyed by its request id, so a record
# replayed from the local journal after a crash is never counted twice.
usage_records = sa.Table(
    "usage_records",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("org_id", sa.String(40), nullable=True),
    sa.Column("team_id", sa.String(40), nullable=True, index=True),
    sa.Column("key_id", sa.String(40), nullable=False, index=True),
    sa.Column("user", sa.String(256), nullable=True),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("deployment", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(80), nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    # Cost in nano-USD: integers add up exactly.
    sa.Column("cost_nusd", sa.BigInteger, nullable=False),
    sa.Column("price_id", sa.Integer, sa.ForeignKey("prices.id"), nullable=True),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("ttft_ms", sa.Float, nullable=True),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("cache_hit", sa.Boolean, nullable=False),
    sa.Column("guardrails", sa.Text, nullable=True),  # JSON: the guardrail decisions
)

# Remote deployments added at run time (/admin/v1/deployments); those in the config file
# are not stored. The provider key is kept only as a Fernet token (encrypted at rest).
deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("alias", sa.String(128), nullable=False, index=True),
    sa.Column("spec", sa.Text, nullable=False),  # the deployment's JSON, without the key
    sa.Column("api_key_encrypted", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# Guardrail policies made through the admin API (those of the config file are not
# stored): every change is a new version, kept; a removal is a version too.
guardrail_policies = sa.Table(
    "guardrail_policies",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("document", sa.Text, nullable=True),  # the policy's JSON; null: removed
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# Requests a guardrail rule sent to a person (`escalate`), and what they decided.
guardrail_reviews = sa.Table(
    "guardrail_reviews",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("policy", sa.String(64), nullable=False),
    sa.Column("rule", sa.String(64), nullable=False),
    sa.Column("key_id", sa.String(40), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("excerpt", sa.Text, nullable=False),  # redacted: the values found masked
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
)

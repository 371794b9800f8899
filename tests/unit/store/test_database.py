from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from inferplane.store.database import open_database, sqlite_url


def test_migrations_create_the_schema_and_are_idempotent(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    for _ in range(2):
        engine = open_database(url)
        with engine.connect() as conn:
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            tables = set(sa.inspect(conn).get_table_names())
        engine.dispose()
    assert version == "0009"
    assert {
        "api_keys",
        "orgs",
        "teams",
        "prices",
        "usage_records",
        "deployments",
        "guardrail_policies",
        "guardrail_reviews",
    } <= tables

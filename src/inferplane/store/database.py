"""Open the store and bring its schema to the newest migration.

SQLite (the embedded default) or PostgreSQL (`INFERPLANE_DATABASE_URL`), same Alembic
migrations. Replicas starting together serialise their migrations on an advisory lock.
Stores reach the database through `connect()` and `transaction()`, which translate the
driver's errors into the exception tree (`store.errors`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from inferplane.errors import InferplaneError
from inferplane.store.errors import map_db_errors

MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 7_270_001


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'inferplane.db'}"


def normalise_url(url: str) -> str:
    """Any PostgreSQL URL (asyncpg, psycopg2, plain) runs on psycopg 3 here."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.split("+")[0] in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return url


def open_database(url: str) -> sa.Engine:
    """Create the engine and run Alembic migrations up to head."""
    url = normalise_url(url)
    engine = sa.create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return engine


@contextmanager
def connect(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection for reads; the driver's errors come out as the tree's."""
    with map_db_errors(), engine.connect() as conn:
        yield conn


@contextmanager
def transaction(
    engine: sa.Engine, *, unique: Callable[[], InferplaneError] | None = None
) -> Iterator[sa.Connection]:
    """A connection in a transaction, committed at the end of the block (its commit's
    errors translated too). `unique` names the error of a unique key already taken."""
    with map_db_errors(unique=unique), engine.begin() as conn:
        yield conn


def reachable(engine: sa.Engine) -> bool:
    """Whether the store answers a query now (blocking: call from a thread)."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True
    except sa.exc.SQLAlchemyError:
        return False


def db_time(engine: sa.Engine, value: datetime) -> datetime:
    """A UTC instant as the dialect compares it: aware for PostgreSQL, naive for SQLite."""
    value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return value if engine.dialect.name == "postgresql" else value.replace(tzinfo=None)

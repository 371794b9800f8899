"""The store's errors, translated once, where the database is touched.

    sqlalchemy.exc.DBAPIError (anything the driver raised)
    ├── IntegrityError on a unique key  -> Conflict 409, or the error its caller names
    └── any other                       -> StoreUnavailable 503 store_unavailable
                                           (an Unavailable, Retry-After: 5)

Every store function that opens a connection runs inside `map_db_errors()` (a context
manager, or a decorator), so nothing above `store/` sees a SQLAlchemy error: the API maps
the tree, as HTTPX maps httpcore's errors in `map_httpcore_exceptions`. SQLAlchemy's own
errors that are not the driver's (a pool timeout, a misused API) are left as they are:
those are bugs or overload, not an unreachable store, and answer 500 as before.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError, IntegrityError

from inferplane.errors import Conflict, InferplaneError, Unavailable

# SQLite's extended result codes for a duplicate key (a primary key is a unique key).
_SQLITE_UNIQUE = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})


class StoreUnavailable(Unavailable):
    """The database could not be reached or could not answer (503, Retry-After: 5).

    `cause` names the driver's error class (OperationalError, ...): that, not its text,
    is what gets logged, since a driver's message may quote a connection string."""

    def __init__(self, cause: str):
        super().__init__(
            "The store is unreachable; try again shortly.",
            retry_after=5,
            code="store_unavailable",
        )
        self.cause = cause


@contextmanager
def map_db_errors(*, unique: Callable[[], InferplaneError] | None = None) -> Iterator[None]:
    """Translate the driver's errors raised in the block into the exception tree.

    A unique key already taken becomes `unique()` where the caller says what that key
    means (a name taken), else a plain Conflict. Errors of our own pass through."""
    try:
        yield
    except IntegrityError as exc:
        if not _unique_violation(exc):
            raise StoreUnavailable(type(exc).__name__) from exc
        if unique is not None:
            raise unique() from exc
        raise Conflict("The change collides with a stored record.") from exc
    except DBAPIError as exc:
        raise StoreUnavailable(type(exc).__name__) from exc


def _unique_violation(exc: IntegrityError) -> bool:
    orig = exc.orig
    if isinstance(orig, sqlite3.IntegrityError):
        return orig.sqlite_errorname in _SQLITE_UNIQUE
    # psycopg is loaded by a PostgreSQL engine; a SQLite install never pays its import.
    if "psycopg" in sys.modules:
        from psycopg.errors import UniqueViolation

        return isinstance(orig, UniqueViolation)
    return False

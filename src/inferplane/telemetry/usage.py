"""Reading the usage ledger: totals grouped by tenant, model and period."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

from inferplane.store.database import connect, db_time
from inferplane.store.tables import usage_records as u

GROUPS: dict[str, tuple[str, sa.ColumnElement[Any]]] = {
    "org": ("org_id", u.c.org_id),
    "team": ("team_id", u.c.team_id),
    "key": ("key_id", u.c.key_id),
    "user": ("user", u.c.user),
    "model": ("model", u.c.model),
    "deployment": ("deployment", u.c.deployment),
    "endpoint": ("endpoint", u.c.endpoint),
    "status": ("status", u.c.status),
}
Granularity = Literal["hour", "day", "month"]
_SQLITE_FORMAT = {"hour": "%Y-%m-%dT%H:00", "day": "%Y-%m-%d", "month": "%Y-%m"}
_PG_FORMAT = {"hour": 'YYYY-MM-DD"T"HH24:00', "day": "YYYY-MM-DD", "month": "YYYY-MM"}
FILTERS = {
    "org_id": u.c.org_id,
    "team_id": u.c.team_id,
    "key_id": u.c.key_id,
    "model": u.c.model,
    "user": u.c.user,
}


def query_usage(
    engine: sa.Engine,
    group_by: list[str],
    start: datetime | None = None,
    end: datetime | None = None,
    granularity: Granularity | None = None,
    filters: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    columns: list[sa.ColumnElement[Any]] = [GROUPS[g][1].label(GROUPS[g][0]) for g in group_by]
    if granularity is not None:
        if engine.dialect.name == "postgresql":
            unit = sa.func.date_trunc(granularity, u.c.created_at)
            period = sa.func.to_char(unit, _PG_FORMAT[granularity])
        else:
            period = sa.func.strftime(_SQLITE_FORMAT[granularity], u.c.created_at)
        columns.insert(0, period.label("period"))
    query = sa.select(
        *columns,
        sa.func.count().label("requests"),
        sa.func.coalesce(sa.func.sum(u.c.prompt_tokens), 0).label("prompt_tokens"),
        sa.func.coalesce(sa.func.sum(u.c.completion_tokens), 0).label("completion_tokens"),
        sa.func.coalesce(sa.func.sum(u.c.cost_nusd), 0).label("cost_nusd"),
        sa.func.sum(sa.case((u.c.status >= 400, 1), else_=0)).label("errors"),
        sa.func.sum(sa.case((u.c.cache_hit, 1), else_=0)).label("cache_hits"),
    ).group_by(*[c for c in columns])
    if start is not None:
        query = query.where(u.c.created_at >= db_time(engine, start))
    if end is not None:
        query = query.where(u.c.created_at < db_time(engine, end))
    for name, value in (filters or {}).items():
        query = query.where(FILTERS[name] == value)
    query = query.order_by(*[c for c in columns]) if columns else query
    with connect(engine) as conn:
        rows = conn.execute(query).mappings().all()
    out = []
    for row in rows:
        item = {k: v for k, v in row.items() if k != "cost_nusd"}
        item["prompt_tokens"] = int(item["prompt_tokens"])
        item["completion_tokens"] = int(item["completion_tokens"])
        item["total_tokens"] = item["prompt_tokens"] + item["completion_tokens"]
        item["errors"] = int(item["errors"] or 0)
        item["cache_hits"] = int(item["cache_hits"] or 0)
        item["cost_usd"] = int(row["cost_nusd"]) / 1e9
        out.append(item)
    return out


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


# A text cell a spreadsheet would read as a formula (OWASP's list): the `user` column
# holds whatever callers sent.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """A text cell, quoted so that a spreadsheet shows it as text, never runs it."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value

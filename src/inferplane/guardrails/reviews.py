"""Requests an `escalate` rule sent to a person: stored pending, with an excerpt of the
text (its findings masked: no value found is kept), then approved, rejected or expired.
Blocking: call from a thread."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from inferplane.errors import Conflict, NotFound
from inferplane.store.database import connect, transaction
from inferplane.store.tables import guardrail_reviews as table
from inferplane.telemetry.ids import unique_id

PENDING, APPROVED, REJECTED, EXPIRED = "pending", "approved", "rejected", "expired"
EXCERPT_CHARS = 500


class ReviewStore:
    def __init__(self, engine: sa.Engine):
        self._engine = engine

    def open(self, *, policy: str, rule: str, key_id: str, model: str, excerpt: str) -> str:
        review_id = "review_" + unique_id()
        with transaction(self._engine) as conn:
            conn.execute(
                table.insert().values(
                    id=review_id,
                    status=PENDING,
                    policy=policy,
                    rule=rule,
                    key_id=key_id,
                    model=model,
                    excerpt=excerpt[:EXCERPT_CHARS],
                    created_at=datetime.now(UTC),
                )
            )
        return review_id

    def get(self, review_id: str) -> dict[str, Any]:
        with connect(self._engine) as conn:
            row = conn.execute(sa.select(table).where(table.c.id == review_id)).mappings().first()
        if row is None:
            raise NotFound(f"No review '{review_id}'.", param="id", code="review_not_found")
        return _view(row)

    def list(self, status: str | None, after: str | None, limit: int) -> dict[str, Any]:
        query = sa.select(table).order_by(table.c.id).limit(limit + 1)
        if status is not None:
            query = query.where(table.c.status == status)
        if after is not None:
            query = query.where(table.c.id > after)
        with connect(self._engine) as conn:
            rows = [_view(r) for r in conn.execute(query).mappings().all()]
        more = len(rows) > limit
        return {
            "object": "list",
            "data": rows[:limit],
            "next": rows[limit - 1]["id"] if more else None,
        }

    def decide(self, review_id: str, status: str, reason: str | None) -> dict[str, Any]:
        """Decide a pending review (409 when it is decided already)."""
        with transaction(self._engine) as conn:
            done = conn.execute(
                table.update()
                .where((table.c.id == review_id) & (table.c.status == PENDING))
                .values(status=status, reason=reason, decided_at=datetime.now(UTC))
            )
        if not done.rowcount:
            current = self.get(review_id)  # 404 when there is none
            raise Conflict(f"Review '{review_id}' is {current['status']} already.", param="id")
        return self.get(review_id)


def _view(row: Any) -> dict[str, Any]:
    def epoch(value: datetime | None) -> int | None:
        return None if value is None else int(value.replace(tzinfo=UTC).timestamp())

    return {
        "id": row["id"],
        "object": "guardrail.review",
        "status": row["status"],
        "policy": row["policy"],
        "rule": row["rule"],
        "key_id": row["key_id"],
        "model": row["model"],
        "excerpt": row["excerpt"],
        "created_at": epoch(row["created_at"]),
        "decided_at": epoch(row["decided_at"]),
        "reason": row["reason"],
    }

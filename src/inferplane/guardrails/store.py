"""Guardrail policies made through the admin API, in the control plane: each change a
new version of the policy (kept, with its time), a removal too. Blocking: call from a
thread."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
import sqlalchemy as sa
from pydantic import ValidationError

from inferplane.errors import Conflict
from inferplane.guardrails.policy import Policy
from inferplane.store.database import connect, transaction
from inferplane.store.tables import guardrail_policies as table

log = logging.getLogger(__name__)


class PolicyStore:
    def __init__(self, engine: sa.Engine):
        self._engine = engine

    def current(self) -> dict[str, tuple[Policy, int]]:
        """Each stored policy's latest version (removed ones left out)."""
        latest = (
            sa.select(table.c.id, sa.func.max(table.c.version).label("version"))
            .group_by(table.c.id)
            .subquery()
        )
        query = sa.select(table).join(
            latest, (table.c.id == latest.c.id) & (table.c.version == latest.c.version)
        )
        with connect(self._engine) as conn:
            rows = conn.execute(query).mappings().all()
        out: dict[str, tuple[Policy, int]] = {}
        for row in rows:
            if row["document"] is None:
                continue
            try:
                out[row["id"]] = (Policy.model_validate_json(row["document"]), row["version"])
            except ValidationError as exc:  # written by another version of the server
                log.error("stored guardrail policy %s is left out: %s", row["id"], exc)
        return out

    def put(self, policy: Policy | None, policy_id: str) -> int:
        """Store a new version (None: the policy removed); its number."""
        document = None if policy is None else policy.model_dump_json(exclude_none=True)
        taken = partial(Conflict, f"Policy '{policy_id}' changed meanwhile; try again.")
        with transaction(self._engine, unique=taken) as conn:
            last = conn.execute(
                sa.select(sa.func.max(table.c.version)).where(table.c.id == policy_id)
            ).scalar()
            version = (last or 0) + 1
            conn.execute(
                table.insert().values(
                    id=policy_id, version=version, document=document, created_at=datetime.now(UTC)
                )
            )
        return version

    def history(self, policy_id: str) -> list[dict[str, Any]]:
        query = sa.select(table).where(table.c.id == policy_id).order_by(table.c.version)
        with connect(self._engine) as conn:
            rows = conn.execute(query).mappings().all()
        return [
            {
                "version": r["version"],
                "created_at": int(r["created_at"].replace(tzinfo=UTC).timestamp()),
                "policy": orjson.loads(r["document"]) if r["document"] else None,
            }
            for r in rows
        ]

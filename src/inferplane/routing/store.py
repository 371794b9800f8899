"""Remote deployments added at run time: stored, key encrypted, in the control plane."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from inferplane.config.routes import RemoteDeployment
from inferplane.routing.secrets import SecretBox
from inferplane.store.tables import deployments as table


@dataclass(frozen=True)
class RuntimeDeployment:
    alias: str
    spec: RemoteDeployment
    api_key: str | None


class DeploymentStore:
    """Blocking: call from a thread."""

    def __init__(self, engine: sa.Engine, box: SecretBox):
        self._engine = engine
        self._box = box

    def all(self) -> list[RuntimeDeployment]:
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(table).order_by(table.c.created_at)).mappings().all()
        return [
            RuntimeDeployment(
                row["alias"],
                RemoteDeployment.model_validate_json(row["spec"]),
                self._box.open_sealed(row["api_key_encrypted"])
                if row["api_key_encrypted"]
                else None,
            )
            for row in rows
        ]

    def put(self, dep: RuntimeDeployment) -> None:
        now = datetime.now(UTC)
        values = {
            "alias": dep.alias,
            "spec": dep.spec.model_dump_json(),
            "api_key_encrypted": self._box.seal(dep.api_key) if dep.api_key else None,
            "updated_at": now,
        }
        with self._engine.begin() as conn:
            updated = conn.execute(
                sa.update(table).where(table.c.name == dep.spec.name).values(**values)
            ).rowcount
            if not updated:
                conn.execute(sa.insert(table).values(name=dep.spec.name, created_at=now, **values))

    def delete(self, name: str) -> bool:
        with self._engine.begin() as conn:
            return bool(conn.execute(sa.delete(table).where(table.c.name == name)).rowcount)

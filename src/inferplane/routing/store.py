"""Deployments added at run time: stored in the control plane (a remote one's key
encrypted). A local deployment is stored as the model spec of its worker, whose id is
the deployment's name."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

import orjson
import sqlalchemy as sa
from pydantic import ValidationError

from inferplane.config import ModelSpec
from inferplane.config.routes import REMOTE_ENGINES, RemoteDeployment
from inferplane.errors import Conflict
from inferplane.routing.secrets import SecretBox
from inferplane.store.database import connect, transaction
from inferplane.store.tables import deployments as table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeDeployment:
    alias: str
    spec: RemoteDeployment | ModelSpec
    api_key: str | None = None  # remote deployments only

    @property
    def name(self) -> str:
        return self.spec.name if isinstance(self.spec, RemoteDeployment) else self.spec.id


def parse_spec(raw: str | bytes) -> RemoteDeployment | ModelSpec:
    """A stored spec: remote by its engine, else a local worker's."""
    spec = orjson.loads(raw)
    if spec.get("engine") in REMOTE_ENGINES:
        return RemoteDeployment.model_validate(spec)
    return ModelSpec.model_validate(spec)


class DeploymentStore:
    """Blocking: call from a thread."""

    def __init__(self, engine: sa.Engine, box: SecretBox):
        self._engine = engine
        self._box = box

    def all(self) -> list[RuntimeDeployment]:
        with connect(self._engine) as conn:
            rows = conn.execute(sa.select(table).order_by(table.c.created_at)).mappings().all()
        out = []
        for row in rows:
            try:
                spec = parse_spec(row["spec"])
            except ValidationError as exc:  # e.g. a local deployment's file has gone
                log.error("stored deployment %s is left out: %s", row["name"], exc)
                continue
            sealed = row["api_key_encrypted"]
            key = self._box.open_sealed(sealed) if sealed else None
            out.append(RuntimeDeployment(row["alias"], spec, key))
        return out

    def exists(self, name: str) -> bool:
        with connect(self._engine) as conn:
            found = conn.execute(sa.select(table.c.name).where(table.c.name == name)).first()
        return found is not None

    def put(self, dep: RuntimeDeployment) -> None:
        now = datetime.now(UTC)
        values = {
            "alias": dep.alias,
            "spec": dep.spec.model_dump_json(),
            "api_key_encrypted": self._box.seal(dep.api_key) if dep.api_key else None,
            "updated_at": now,
        }
        # Two replicas adding one name at once: the second is told it exists, as it would
        # have been a moment later (the name is the primary key).
        taken = partial(Conflict, f"A deployment named '{dep.name}' exists.", param="name")
        with transaction(self._engine, unique=taken) as conn:
            updated = conn.execute(
                sa.update(table).where(table.c.name == dep.name).values(**values)
            ).rowcount
            if not updated:
                conn.execute(sa.insert(table).values(name=dep.name, created_at=now, **values))

    def delete(self, name: str) -> bool:
        with transaction(self._engine) as conn:
            return bool(conn.execute(sa.delete(table).where(table.c.name == name)).rowcount)

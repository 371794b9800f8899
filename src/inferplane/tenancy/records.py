"""The immutable in-memory view of tenancy the data plane reads (no database per request)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from types import MappingProxyType

from inferplane.limits.policy import Budget, Limits


@dataclass(frozen=True, slots=True)
class TeamRecord:
    id: str
    org_id: str
    name: str
    limits: Limits
    budget: Budget | None = None
    weight: float = 1.0  # share of a contended model's capacity, relative to other teams
    # The team's metadata `data_class`: its keys' requests are at least that sensitive.
    data_class: str | None = None
    policy: str | None = None  # its metadata `policy`: its keys' guardrail policy


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    role: str  # "user" or "admin"
    team_id: str | None
    models: tuple[str, ...] | None  # ids or glob patterns; None: every model
    limits: Limits
    priority: str  # "interactive" or "batch"
    expires_at: datetime | None
    budget: Budget | None = None
    # The key's metadata `data_class` (e.g. "confidential"), normalized: every request it
    # makes is routed as at least that sensitive, whatever its header says.
    data_class: str | None = None
    policy: str | None = None  # its metadata `policy`: the guardrail policy of its requests


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key, its team, and (optionally) the end user it acts for."""

    key: KeyRecord
    team: TeamRecord | None
    user: str | None = None

    @property
    def key_id(self) -> str:
        return self.key.id

    @property
    def org_scope(self) -> str:
        """The tenant boundary for shared state (prompt caches): the key's organisation,
        or the key itself when it belongs to no team."""
        return f"org:{self.team.org_id}" if self.team else f"key:{self.key.id}"

    @property
    def is_admin(self) -> bool:
        return self.key.role == "admin"

    def may_use(self, model: str) -> bool:
        patterns = self.key.models
        return patterns is None or any(fnmatchcase(model, p) for p in patterns)


@dataclass(frozen=True, slots=True)
class Credential:
    """One accepted secret hash: the current one, or a rotated-out one until its grace ends."""

    principal: Principal
    valid_until: datetime | None  # the earlier of key expiry and rotation grace


@dataclass(frozen=True)
class Snapshot:
    credentials: MappingProxyType[str, Credential] = field(
        default_factory=lambda: MappingProxyType({})
    )

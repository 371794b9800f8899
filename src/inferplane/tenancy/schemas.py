"""What the control plane accepts: validated commands for orgs, teams and keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inferplane.limits.policy import Budget, Limits

Name = Annotated[str, Field(min_length=1, max_length=200)]
# Tags an admin attaches (OpenAI's bounds for metadata, widened to 64 pairs): `data_class`
# is read by routing, `policy` by the guardrails, the rest is kept and shown.
Metadata = Annotated[
    dict[
        Annotated[str, Field(min_length=1, max_length=64)],
        Annotated[str, Field(max_length=512)],
    ],
    Field(max_length=64),
]
Weight = Annotated[float, Field(gt=0, le=1000)]
ModelPatterns = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=256)
]


# A guardrail policy's id (`policy` on a team or key: stored as its metadata `policy`).
PolicyId = Annotated[str, Field(min_length=1, max_length=64)]


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _future(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    if value <= datetime.now(UTC):
        raise ValueError("must be in the future")
    return value


class OrgCreate(_Command):
    name: Name


class TeamCreate(_Command):
    name: Name
    org_id: Annotated[str, Field(min_length=1)]
    limits: Limits = Limits()
    budget: Budget | None = None
    weight: Weight = 1.0
    metadata: Metadata = {}
    policy: PolicyId | None = None


class TeamUpdate(_Command):
    name: Name | None = None
    limits: Limits | None = None
    budget: Budget | None = None
    weight: Weight | None = None
    metadata: Metadata | None = None
    policy: PolicyId | None = None


class KeyCreate(_Command):
    name: Name
    team_id: str | None = None
    role: Literal["user", "admin"] = "user"
    models: ModelPatterns | None = None
    limits: Limits = Limits()
    budget: Budget | None = None
    expires_at: datetime | None = None
    priority: Literal["interactive", "batch"] = "interactive"
    metadata: Metadata = {}
    policy: PolicyId | None = None

    _check_expiry = field_validator("expires_at")(_future)


class KeyUpdate(_Command):
    name: Name | None = None
    models: ModelPatterns | None = None
    limits: Limits | None = None
    budget: Budget | None = None
    expires_at: datetime | None = None
    priority: Literal["interactive", "batch"] | None = None
    metadata: Metadata | None = None
    policy: PolicyId | None = None

    _check_expiry = field_validator("expires_at")(_future)


class KeyRotate(_Command):
    # How long the old secret keeps working, so callers can switch without downtime.
    grace_seconds: Annotated[int, Field(ge=0, le=30 * 86400)] = 3600

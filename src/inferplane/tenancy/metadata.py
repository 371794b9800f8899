"""What the data plane reads of a team's or key's metadata: its data class (routing) and
its guardrail policy."""

from __future__ import annotations

from typing import Any

from inferplane.tenancy.schemas import KeyCreate, KeyUpdate, TeamCreate, TeamUpdate


def attached(cmd: TeamCreate | TeamUpdate | KeyCreate | KeyUpdate, current: Any) -> Any:
    """The metadata to store (None: unchanged): the command's, or the current one when it
    names none, with the command's `policy` set or (null) removed."""
    metadata = cmd.metadata
    if "policy" not in cmd.model_fields_set:
        return metadata
    out = dict(metadata if metadata is not None else current or {})
    if cmd.policy is None:
        out.pop("policy", None)
    else:
        out["policy"] = cmd.policy
    return out


def policy_of(metadata: Any) -> str | None:
    value = metadata.get("policy") if isinstance(metadata, dict) else None
    return value if isinstance(value, str) else None


def data_class_of(metadata: Any) -> str | None:
    """The metadata's `data_class`, normalized (the policy checks it per request: one the
    vocabulary no longer has refuses the key's requests)."""
    value = metadata.get("data_class") if isinstance(metadata, dict) else None
    return value.strip().lower() if isinstance(value, str) else None

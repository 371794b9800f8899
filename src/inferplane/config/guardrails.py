"""`guardrails:` in the config file."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inferplane.config.routes import Name


class GuardrailSettings(BaseModel):
    """Policy documents (read by `guardrails.policy` at start-up) and the one that
    applies where nothing more specific does."""

    model_config = ConfigDict(extra="forbid")

    default_policy: Name | None = None
    policies: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _default_exists(self) -> GuardrailSettings:
        ids = [p.get("id") for p in self.policies]
        if self.default_policy is not None and self.default_policy not in ids:
            raise ValueError(f"default_policy '{self.default_policy}' is not one of the policies")
        return self

"""What a limit says. Limits apply at key, team and model level; every level must admit."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Positive = Annotated[int, Field(ge=1, le=1_000_000_000)]


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: Positive | None = None  # requests per minute (sliding 60 s window)
    tpm: Positive | None = None  # prompt + completion tokens per minute (sliding window)
    max_parallel: Positive | None = None  # requests in flight at once
    max_tokens: Positive | None = None  # completion tokens one request may ask for
    # Response cache policy (the most specific of key, team, model wins; else the server's).
    cache: Literal["off", "deterministic", "all"] | None = None

    @property
    def empty(self) -> bool:
        return not (self.rpm or self.tpm or self.max_parallel or self.max_tokens)


class Budget(BaseModel):
    """Spend cap in USD per period; `soft_pct` of it raises an alert, all of it refuses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    usd: Annotated[float, Field(gt=0, le=1e9)]
    period: Literal["day", "week", "month", "total"] = "month"
    soft_pct: Annotated[int, Field(ge=1, le=100)] = 80

    @property
    def cap_nusd(self) -> int:
        return round(self.usd * 1e9)

"""What a limit says. Limits apply at key, team and model level; every level must admit."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Positive = Annotated[int, Field(ge=1, le=1_000_000_000)]


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: Positive | None = None  # requests per minute (sliding 60 s window)
    tpm: Positive | None = None  # prompt + completion tokens per minute (sliding window)
    max_parallel: Positive | None = None  # requests in flight at once
    max_tokens: Positive | None = None  # completion tokens one request may ask for

    @property
    def empty(self) -> bool:
        return not (self.rpm or self.tpm or self.max_parallel or self.max_tokens)

"""Request schema of /v1/embeddings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inferplane.api.openai.common import EndUser, ModelName


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: ModelName
    input: str | Annotated[list[str], Field(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1, le=65_536)] | None = None
    user: EndUser | None = None

    @field_validator("input")
    @classmethod
    def _as_list(cls, v: str | list[str]) -> list[str]:
        return [v] if isinstance(v, str) else v

    @property
    def inputs(self) -> list[str]:
        assert isinstance(self.input, list)
        return self.input

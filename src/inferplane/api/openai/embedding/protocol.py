"""Request schema of /v1/embeddings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from inferplane.api.openai.common import EndUser, ModelName

_MAX_INPUTS = 2048  # OpenAI's bound on the inputs of one request
# Token ids: OpenAI's tokenizer's (`token_ids.py`).
TokenIds = Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: ModelName
    # A text, texts, a token list or token lists (OpenAI's four forms).
    input: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=_MAX_INPUTS)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=_MAX_INPUTS)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1, le=65_536)] | None = None
    user: EndUser | None = None

    @property
    def token_ids(self) -> list[list[int]] | None:
        """The input's token lists, when it is given as token ids (OpenAI's, read with
        `token_ids.decode`)."""
        value = self.input
        if isinstance(value, str) or isinstance(value[0], str):
            return None
        if isinstance(value[0], int):
            return [value]
        return value

    @property
    def texts(self) -> list[str]:
        """The texts to embed, when the input is given as text."""
        value = self.input
        return [value] if isinstance(value, str) else value  # type: ignore[return-value]

"""Request schema of /v1/embeddings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from inferplane.api.openai.common import EndUser, ModelName
from inferplane.errors import InvalidRequest

_MAX_INPUTS = 2048  # OpenAI's bound on the inputs of one request
# Token ids (parsed to be refused by name: see `token_ids`).
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
    def texts(self) -> list[str]:
        """The texts to embed. Token ids are refused by name: OpenAI's are its own
        tokenizer's (LangChain's `OpenAIEmbeddings` sends tiktoken's cl100k ids by
        default), which no model here reads; read as a local model's own, they would
        embed other words without a word of warning."""
        value = self.input
        if isinstance(value, str):
            return [value]
        texts = [v for v in value if isinstance(v, str)]
        if len(texts) < len(value):
            raise InvalidRequest(
                "Token ids as 'input' are not supported: send the text. (LangChain: "
                "OpenAIEmbeddings(..., check_embedding_ctx_length=False) sends text.)",
                param="input",
                code="unsupported_value",
            )
        return texts

"""Request schema of /v1/chat/completions."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inferplane.api.openai.common import SamplingRequest, TokenCount
from inferplane.api.openai.parameters import CHAT_UNSUPPORTED
from inferplane.errors import InvalidRequest


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: Annotated[str, Field(max_length=256)] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> Self:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("'json_schema' is required with type 'json_schema'")
        return self


class ChatCompletionRequest(SamplingRequest):
    unsupported = CHAT_UNSUPPORTED

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: TokenCount | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None

    def sampling(self) -> dict[str, Any]:
        params = super().sampling()
        if self.response_format is not None and self.response_format.type != "text":
            params["response_format"] = self.response_format.model_dump(
                by_alias=True, exclude_none=True
            )
        return params

    def logprobs_asked(self) -> int | None:
        if self.logprobs:
            return self.top_logprobs or 0
        if self.top_logprobs:
            raise InvalidRequest(
                "'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs"
            )
        return None

    def prompt_input(self) -> dict[str, Any]:
        return {
            "messages": [{"role": m.role, "content": m.text()} for m in self.messages],
            "max_tokens": self.max_completion_tokens or self.max_tokens,
            "stop": self.stop,
        }

    def size_hint(self) -> int:
        return sum(len(m.text()) for m in self.messages)

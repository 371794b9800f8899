"""Request schema of /v1/chat/completions."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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


class ChatCompletionRequest(SamplingRequest):
    unsupported = CHAT_UNSUPPORTED

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: TokenCount | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

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

"""Request schema of /v1/completions."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StrictInt, field_validator

from inferplane.api.openai.common import SamplingRequest
from inferplane.api.openai.parameters import COMPLETIONS_UNSUPPORTED
from inferplane.errors import UnsupportedParameter


class CompletionRequest(SamplingRequest):
    unsupported = COMPLETIONS_UNSUPPORTED
    # One prompt per request (n=1); a one-element list is accepted as OpenAI's SDKs send it.
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: bool = False
    # The legacy API's: how many alternatives to report with each token's log probability.
    logprobs: Annotated[StrictInt, Field(ge=0, le=5)] | None = None

    def logprobs_asked(self) -> int | None:
        if self.logprobs is not None and self.echo:
            # OpenAI's would cover the echoed prompt's tokens too: not computed here.
            raise UnsupportedParameter("logprobs", "with echo")
        return self.logprobs

    @field_validator("prompt")
    @classmethod
    def _single(cls, v: str | list[str]) -> str:
        return v if isinstance(v, str) else v[0]

    def prompt_input(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "max_tokens": self.max_tokens, "stop": self.stop}

    def size_hint(self) -> int:
        return len(self.prompt)

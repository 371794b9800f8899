"""Request fields and helpers shared by the generation endpoints."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Self

from fastapi import Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from inferplane.api.openai.parameters import refuse_unsupported
from inferplane.api.services import services
from inferplane.engines.local.model import LocalModel
from inferplane.errors import InvalidRequest
from inferplane.pipeline.context import Outcome
from inferplane.telemetry.ids import unique_id


class _Request(BaseModel):
    # Unknown fields are ignored, as most OpenAI-compatible servers do: SDKs and
    # frameworks send extras (user, metadata, ...) that do not change the result.
    model_config = ConfigDict(extra="ignore")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


# Bounds of what the engines accept: llama.cpp and most servers read token counts as
# 32-bit integers and seeds as 64-bit ones (out of range: 400 naming the parameter).
MAX_TOKENS_LIMIT = 2**31 - 1
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
TokenCount = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]
# Strings a request carries are bounded (the ledger stores `user`); the limits are
# documented in the README's security section.
ModelName = Annotated[str, Field(min_length=1, max_length=256)]
EndUser = Annotated[str, Field(max_length=256)]
StopString = Annotated[str, Field(min_length=1, max_length=256)]
# A bias (-100 to 100) per token id, as OpenAI's: ids as JSON object keys, 300 at most.
LogitBias = Annotated[
    dict[
        Annotated[str, Field(pattern=r"^(0|[1-9][0-9]{0,8})$")],  # one spelling per id
        Annotated[float, Field(ge=-100, le=100)],
    ],
    Field(max_length=300),
]
# OpenAI's own bounds for request metadata: 16 pairs, keys up to 64, values up to 512.
RequestMetadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
    Field(max_length=16),
]


class SamplingRequest(_Request):
    # Fields outside the schema are kept (`model_extra`) to refuse those that change the
    # answer when no engine here honours them (`parameters.py`); the others are ignored.
    model_config = ConfigDict(extra="allow")
    unsupported: ClassVar[Mapping[str, tuple[Any, ...]]] = {}

    model: ModelName
    max_tokens: TokenCount | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    seed: Seed | None = None
    stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] = 1  # OpenAI's bound
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    logit_bias: LogitBias | None = None
    # The open servers' extensions (vLLM, llama.cpp's server), sent as `extra_body`.
    top_k: Annotated[int, Field(ge=-1, le=MAX_TOKENS_LIMIT)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: EndUser | None = None
    metadata: RequestMetadata | None = None

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> Self:
        # An InvalidRequest is not a validation error: pydantic lets it through.
        if self.model_extra:
            refuse_unsupported(self.model_extra, self.unsupported)
        return self

    @field_validator(
        "temperature",
        "top_p",
        "n",
        "presence_penalty",
        "frequency_penalty",
        "stream",
        mode="before",
    )
    @classmethod
    def _null_is_the_default(cls, v: Any, info: ValidationInfo) -> Any:
        # OpenAI's schema allows null for these: the default, as if absent.
        return cls.model_fields[info.field_name or ""].default if v is None else v

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        return [v] if isinstance(v, str) else v

    def sampling(self) -> dict[str, Any]:
        """The worker's sampling parameters (prompt, stops and max_tokens go separately)."""
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest(
                "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
            )
        params: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
        }
        # The others only when they ask for something: an upstream that lacks one
        # (OpenAI's has no top_k) then never sees it, and cache keys stay as they were.
        if self.n > 1:
            params["n"] = self.n
        if self.logit_bias:
            params["logit_bias"] = self.logit_bias
        if self.top_k not in (None, 0, -1):
            params["top_k"] = self.top_k
        if self.min_p:
            params["min_p"] = self.min_p
        if self.repetition_penalty not in (None, 1):
            params["repetition_penalty"] = self.repetition_penalty
        alternatives = self.logprobs_asked()
        if alternatives is not None:
            params["logprobs"] = alternatives  # reported with this many alternatives
        return params

    def logprobs_asked(self) -> int | None:
        """How many alternatives to report with each token's log probability (None:
        no log probabilities). Each endpoint asks its own way."""
        return None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def mark_served(request: Request, model: LocalModel) -> None:
    """Record what serves this request: metrics labels and the response's headers."""
    outcome: Outcome = request.state.outcome
    outcome.model = model.id
    outcome.served_by(model.deployment, model.version)


def queue_deadline(request: Request) -> float:
    """When the request must have left the model's queue: the server's limit, or less."""
    limit = services(request).settings.server.queue_timeout_s
    asked = request.headers.get("x-inferplane-timeout")
    if asked is not None:
        try:
            seconds = float(asked)
        except ValueError:
            raise InvalidRequest(
                "x-inferplane-timeout must be a number of seconds.", param="x-inferplane-timeout"
            ) from None
        if not 0 < seconds < 1e9:
            raise InvalidRequest(
                "x-inferplane-timeout must be positive.", param="x-inferplane-timeout"
            )
        limit = min(limit, seconds)
    return time.monotonic() + limit


def new_id(prefix: str) -> str:
    return f"{prefix}-{unique_id()}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }

"""The one interface every engine implements, local or remote.

A deployment holds one `Engine`; nothing above `engines/` knows which kind it is. The
pipeline asks it to `prepare` a request (template, tokenize or estimate, check the
context), then to `generate` the prepared request as events (`inferplane.events`), or to
`count` and `embed` inputs where it is an embedding model; routing asks it to `check` its
health; whoever built it `aclose`s it.

What an engine needs to know of the caller travels in a `Caller`: a local model's queue
orders requests by fair share, priority class and deadline, and its prefix cache is
scoped by organisation. An engine calls `dispatched(prompt_tokens)` once the request has
left the gateway for the model (its queue slot taken, or on its way upstream): from then
on a caller who leaves is charged what was used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from inferplane.errors import InvalidRequest, UnsupportedParameter
from inferplane.events import Embeddings, GenerationEvent

Dispatched = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Caller:
    share: str  # the fair-share group: "team:ID", else "key:ID"
    weight: float = 1.0  # the group's share
    batch: bool = False  # the batch priority class: served after interactive requests
    deadline: float | None = None  # time.monotonic() by which it must leave the queue
    scope: str = ""  # who may reuse a cached prompt prefix (an organisation)


@dataclass(frozen=True, slots=True)
class GenerationInput:
    """A generation request as an engine reads it: `prompt` holds `messages` or
    `prompt`, and `max_tokens` and `stop` where the caller sent them (`max_tokens`
    already within the key's cap, `cap`)."""

    endpoint: str  # "chat.completions" or "completions"
    prompt: dict[str, Any]
    size_hint: int  # the prompt's size in bytes, about
    cap: int | None = None  # the most completion tokens the caller's limits allow

    def capped(self) -> dict[str, Any]:
        """The prompt with the caller's max_tokens within the cap (the cap itself when
        the caller asked for nothing): what a remote model is asked. Over the cap: 400."""
        asked = self.prompt.get("max_tokens")
        if self.cap is None:
            return self.prompt
        if asked is not None and asked > self.cap:
            raise InvalidRequest(
                f"max_tokens is {asked}, above this key's limit of {self.cap} per request.",
                param="max_tokens",
                code="max_tokens_exceeded",
            )
        return {**self.prompt, "max_tokens": asked or self.cap}

    def estimate_tokens(self) -> int:
        """Prompt tokens where no local tokenizer applies: ~4 bytes a token plus a few
        per chat message; the upstream's reported usage settles the real count."""
        if "messages" in self.prompt:
            msgs = self.prompt["messages"]
            tools = len(str(self.prompt.get("tools") or "").encode()) // 4
            return sum(len(str(m.get("content") or "").encode()) // 4 + 4 for m in msgs) + tools + 2
        return len(str(self.prompt.get("prompt") or "").encode()) // 4 + 1


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request made ready for one engine."""

    prompt_tokens: int  # counted by the engine's tokenizer, or estimated (`Engine.counts`)
    max_tokens: int  # the completion tokens to reserve
    payload: Any  # the engine's own form of the request
    dropped_turns: int = 0  # oldest chat turns left out to fit the context


class Engine(Protocol):
    @property
    def kind(self) -> str:
        """The configured engine: llamacpp, sentence_transformers, openai_compatible..."""
        ...

    @property
    def version(self) -> str:
        """What exactly serves: a local model's weights fingerprint, a remote model."""
        ...

    @property
    def counts(self) -> bool:
        """Whether `prepare` counts prompt tokens exactly (a local tokenizer) rather than
        estimating them."""
        ...

    @property
    def timeout_s(self) -> float | None:
        """The longest an attempt waits for the first event (None: the request's own
        deadline bounds it)."""
        ...

    def refusal(
        self, prompt: Mapping[str, Any], sampling: Mapping[str, Any]
    ) -> UnsupportedParameter | None:
        """Why this engine cannot honour the request (`GenerationInput.prompt`, and its
        sampling parameters): the first parameter it cannot, or None. Routing leaves
        such a deployment out."""
        ...

    async def prepare(self, request: GenerationInput) -> Prepared: ...

    def generate(
        self,
        prepared: Prepared,
        sampling: dict[str, Any],
        *,
        endpoint: str,
        stream: bool,
        caller: Caller,
        dispatched: Dispatched,
    ) -> AsyncIterator[GenerationEvent]:
        """The generation's events: `Started`, `TextDelta`s, `Finished`."""
        ...

    async def count(self, inputs: list[str]) -> list[int]:
        """Each input's tokens (embedding models)."""
        ...

    async def embed(
        self, inputs: list[str], tokens: list[int], caller: Caller, dispatched: Dispatched
    ) -> Embeddings: ...

    async def check(self) -> bool:
        """Active health check: whether the model answers (an open breaker may then let
        a probe through before its cooldown ends)."""
        ...

    async def aclose(self) -> None: ...


class Refusals:
    """What an engine answers to the calls it does not serve: 400 `model_not_supported`
    naming the model. Engines inherit it and override what they serve (generation:
    `prepare` and `generate`; embeddings: `count` and `embed`)."""

    @property
    def name(self) -> str:
        """The model's name in an error."""
        raise NotImplementedError

    def refusal(
        self, prompt: Mapping[str, Any], sampling: Mapping[str, Any]
    ) -> UnsupportedParameter | None:
        return None  # every parameter the API accepts

    async def prepare(self, request: GenerationInput) -> Prepared:
        raise unsupported(self.name, "llm")

    def generate(
        self,
        prepared: Prepared,
        sampling: dict[str, Any],
        *,
        endpoint: str,
        stream: bool,
        caller: Caller,
        dispatched: Dispatched,
    ) -> AsyncIterator[GenerationEvent]:
        raise unsupported(self.name, "llm")

    async def count(self, inputs: list[str]) -> list[int]:
        raise unsupported(self.name, "embedding")

    async def embed(
        self, inputs: list[str], tokens: list[int], caller: Caller, dispatched: Dispatched
    ) -> Embeddings:
        raise unsupported(self.name, "embedding")


def unsupported(model: str, kind: str) -> InvalidRequest:
    """The error for a request a model cannot serve (`kind`: "llm" or "embedding")."""
    action = "text generation" if kind == "llm" else "embeddings"
    return InvalidRequest(
        f"The model '{model}' does not support {action}.",
        param="model",
        code="model_not_supported",
    )

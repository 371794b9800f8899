"""The generation event vocabulary every layer shares: what an engine yields, the
pipeline passes on and the HTTP layer writes. The lowest floor: it imports nothing of
inferplane, so engines, pipeline and api may all import it without a cycle."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Started:
    prompt_tokens: int


# A generated token's log probability: its text and bytes (a token may hold part of a
# character), its log probability, and the most likely tokens' (text, bytes, logprob).
Alternative = tuple[str, list[int], float]
TokenLogprob = tuple[str, list[int], float, list[Alternative]]


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    tokens_so_far: int = 0  # completion tokens generated up to and including this text
    # The source already holds the next event (it came in the same read from the
    # upstream): a writer may send both in one write. Only a hint; never a wait.
    more: bool = False
    # The log probabilities of the tokens this text holds, when the request asked.
    logprobs: list[TokenLogprob] | None = None
    choice: int = 0  # which of the request's `n` answers this text is of


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of the answer's `index`-th tool call: its first piece carries the call's
    `id` and function `name` (with the arguments so far, maybe none), later pieces more
    of its `arguments` (JSON text; all pieces joined, the whole arguments object)."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None
    tokens_so_far: int = 0  # as TextDelta's
    more: bool = False  # as TextDelta's
    choice: int = 0  # as TextDelta's


@dataclass(frozen=True, slots=True)
class Finished:
    """The end: the (first) answer's finish reason, the tokens of the prompt and of all
    answers; with `n` > 1 answers, each one's finish reason (`choices`)."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    choices: tuple[str, ...] = ()

    @property
    def reasons(self) -> tuple[str, ...]:
        """Each answer's finish reason, in order."""
        return self.choices or (self.finish_reason,)


GenerationEvent = Started | TextDelta | ToolCallDelta | Finished


def in_hand(events: list[GenerationEvent], then_more: bool) -> list[GenerationEvent]:
    """The events parsed from one read of an upstream, its deltas made with `more=True`:
    the last one keeps it only when another event follows at once (`then_more`)."""
    if events and not then_more and isinstance(last := events[-1], TextDelta | ToolCallDelta):
        events[-1] = dataclasses.replace(last, more=False)
    return events


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: bytes  # float32, row-major, len(inputs) x dim
    dim: int
    tokens: list[int]  # per input

"""What the invoke stage yields to the HTTP layer while a generation runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Started:
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    tokens_so_far: int = 0  # completion tokens generated up to and including this text
    # The source already holds the next event (it came in the same read from the
    # upstream): a writer may send both in one write. Only a hint; never a wait.
    more: bool = False


@dataclass(frozen=True, slots=True)
class Finished:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


GenerationEvent = Started | TextDelta | Finished


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: bytes  # float32, row-major, len(inputs) x dim
    dim: int
    tokens: list[int]  # per input

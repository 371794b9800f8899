"""Scripted answers for the unit tests' fake engines: one outcome per call, played as
the events an engine yields (shared by the router's and the pipeline's tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from inferplane.engines.interface import Dispatched
from inferplane.errors import InferplaneError
from inferplane.events import Finished, GenerationEvent, Started, TextDelta


@dataclass(frozen=True)
class Serve:
    """Answer in full: Started, one TextDelta per piece, Finished."""

    pieces: tuple[str, ...] = ("Hello", " world")


@dataclass(frozen=True)
class FailBefore:
    """Fail before the first token (after Started, as an upstream's 5xx would)."""

    exc: InferplaneError


@dataclass(frozen=True)
class FailAfter:
    """Deliver `pieces`, then break mid-stream."""

    pieces: tuple[str, ...]
    exc: InferplaneError


@dataclass(frozen=True)
class Hang:
    """Never answer."""


@dataclass
class Queued:
    """Wait in the model's queue until `gate` is set (never dispatched before), then
    answer in full."""

    gate: asyncio.Event
    pieces: tuple[str, ...] = ("Hello", " world")
    waiting: asyncio.Event = field(default_factory=asyncio.Event)  # set once it waits


Script = Serve | FailBefore | FailAfter | Hang | Queued


def _nothing(prompt_tokens: int) -> None:
    pass


class Scripted:
    """A fake engine's script: `play` answers the next call with the next outcome and
    counts the streams that ran their cleanup (`closed`)."""

    def __init__(self, who: str, script: list[Script]):
        self._who = who  # for a failed assertion's message
        self.script = script
        self.closed = 0

    def play(
        self, prompt_tokens: int, dispatched: Dispatched = _nothing
    ) -> AsyncIterator[GenerationEvent]:
        assert self.script, f"{self._who} was asked more often than scripted"
        return self._events(self.script.pop(0), prompt_tokens, dispatched)

    async def _events(
        self, outcome: Script, prompt_tokens: int, dispatched: Dispatched
    ) -> AsyncIterator[GenerationEvent]:
        try:
            await asyncio.sleep(0)  # a model answers after some I/O
            if isinstance(outcome, Hang):
                await asyncio.Event().wait()  # until the attempt is cancelled
                return
            if isinstance(outcome, Queued):
                outcome.waiting.set()
                await outcome.gate.wait()
            dispatched(prompt_tokens)
            yield Started(prompt_tokens)
            if isinstance(outcome, FailBefore):
                raise outcome.exc
            for n, piece in enumerate(outcome.pieces, 1):
                yield TextDelta(piece, tokens_so_far=n)
            if isinstance(outcome, FailAfter):
                raise outcome.exc
            yield Finished("stop", prompt_tokens, len(outcome.pieces))
        finally:
            self.closed += 1

"""The llama.cpp engine's sequence slots: one running request's state, and which free
slot a new request takes.

Prefix reuse: a free sequence slot keeps the KV cells of its last prompt, with that
prompt's scope; a new request takes the free slot sharing the longest prefix with its
own prompt, within its scope, and prefills only the rest. Otherwise it takes the slot
that keeps the running sequence ids contiguous (`gaps_with`).
"""

from __future__ import annotations

import codecs
import itertools
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from inferplane.engines.worker.sampler import TokenPicker
from inferplane.engines.worker.stops import StopMatcher
from inferplane.events import TokenLogprob

# Shorter shared prefixes are recomputed: cheap, and the slot stays free for a longer one.
MIN_REUSE = 16


@dataclass
class Choices:
    """A request of `n` > 1 choices: its op, the sequence slots kept for choices 1..n-1
    until the prompt is in (then they are forked from choice 0's), how each choice
    ended, and the tokens generated over all."""

    op: Any  # the request's `Generate`
    kept: list[int]
    ended: dict[int, str] = field(default_factory=dict)
    generated: int = 0


@dataclass
class Slot:
    """One request decoding in sequence slot `seq_id`."""

    seq_id: int
    request_id: int
    prompt: list[int]
    max_tokens: int
    stops: StopMatcher
    picker: TokenPicker
    lstrip: bool
    scope: str  # whose prompt this is: cached prefixes are reused only within a scope
    prefilled: int = 0  # prompt tokens already in the KV cache
    next_token: int | None = None  # sampled, to be fed at the next step
    generated: int = 0
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    logprobs: int | None = None  # report log probabilities, and this many alternatives
    # The log probabilities of tokens whose text has not been sent yet (held back by
    # a stop string that may be starting, or a character not complete yet).
    pending: list[TokenLogprob] = field(default_factory=list)
    choice: int = 0
    choices: Choices | None = None  # the request's, when it asked for several

    def take_pending(self) -> list[TokenLogprob] | None:
        """The held log probabilities, to send with text now (None: none asked)."""
        if self.logprobs is None:
            return None
        taken, self.pending = self.pending, []
        return taken


def shared_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two prompts share."""
    pairs = enumerate(zip(a, b, strict=False))
    return next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))


def gaps_with(in_use: Collection[int], seq: int) -> tuple[int, int]:
    """How fragmented the running sequence ids would be with `seq` added (then the id).

    llama.cpp decodes a batch of sequences with contiguous ids in one piece, and
    splits it where ids have gaps: 8 sequences with one gap took 67 ms a step instead
    of 51, five with ids 0,2,4,6,8 took 99 ms instead of 50 (measured, 2-core Xeon).
    So a new request fills a gap, or extends the run of ids in use.
    """
    ids = sorted([*in_use, seq])
    runs = 1 + sum(1 for a, b in itertools.pairwise(ids) if b != a + 1)
    return runs, seq


def pick_slot(
    free: list[int],
    in_use: Collection[int],
    cached: Mapping[int, tuple[str, list[int]]] | None,
    scope: str,
    tokens: list[int],
) -> tuple[int, int]:
    """(free sequence slot, prompt tokens already in its KV cache) for a prompt.

    `cached`: free slot -> (scope, prompt tokens its KV cells hold); None with prefix
    reuse off."""

    def gaps(seq: int) -> tuple[int, int]:
        return gaps_with(in_use, seq)

    best, best_len = None, 0
    if cached is not None:
        for seq in sorted(free, key=gaps):
            cached_scope, prefix = cached.get(seq, ("", []))
            if cached_scope != scope:
                continue
            same = shared_prefix(prefix, tokens)
            if same > best_len:
                best, best_len = seq, same
    if best is None or best_len < MIN_REUSE:
        return min(free, key=gaps), 0
    # At least the prompt's last token is fed again: its logits give the first token.
    return best, min(best_len, len(tokens) - 1)

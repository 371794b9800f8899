"""The llama.cpp engine's sequence slots through a request's life: a request given its
slot (and one kept per extra choice), its other choices forked from its prompt's KV
cells, each token emitted (text, log probabilities), a choice finished, a slot released
(its prompt's cells kept for prefix reuse). The scheduling, batching and decoding are in
`llamacpp.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from inferplane.engines.worker import protocol
from inferplane.engines.worker.base import EngineBase
from inferplane.engines.worker.grammar import Grammar, Vocabulary
from inferplane.engines.worker.sampler import TokenPicker, log_probabilities
from inferplane.engines.worker.slots import Choices, Slot, gaps_with, pick_slot
from inferplane.engines.worker.stats import StepStats
from inferplane.engines.worker.stops import StopMatcher
from inferplane.events import Alternative, TokenLogprob


class SlotKeeper(EngineBase):
    """The slots' side of `LlamaCppEngine` (which sets these up)."""

    _L: Any
    _ctx: Any
    _model: Any
    _vocab: Any
    _n_vocab: int
    _n_ctx: int
    _slots: dict[int, Slot]
    _kept: set[int]
    _cached: dict[int, tuple[str, list[int]]]
    _prefix_cache: bool
    _vocabulary: Vocabulary | None
    _stats: StepStats

    def _start(self, rid: int, op: protocol.Generate, picker: TokenPicker, free: list[int]) -> None:
        """Give the request its slot (the free one sharing most of its prompt), and keep
        one more per extra choice."""
        tokens = op.tokens
        cached = self._cached if self._prefix_cache else None
        seq_id, reuse = pick_slot(free, self._slots, cached, op.scope, tokens)
        free.remove(seq_id)
        self._cached.pop(seq_id, None)
        self._L.llama_memory_seq_rm(self._ctx.memory, seq_id, reuse, -1)
        choices = None
        if op.n > 1:
            kept: list[int] = []
            for _ in range(op.n - 1):
                busy = [*self._slots, *self._kept, seq_id, *kept]
                kept.append(min(free, key=lambda s: gaps_with(busy, s)))
                free.remove(kept[-1])
            self._kept.update(kept)
            choices = Choices(op, kept)
        self._slots[seq_id] = Slot(
            seq_id=seq_id,
            request_id=rid,
            prompt=tokens,
            max_tokens=min(op.max_tokens, self._n_ctx - len(tokens)),
            stops=StopMatcher(op.stop),
            picker=picker,
            logprobs=op.logprobs,
            lstrip=op.lstrip,
            scope=op.scope,
            prefilled=reuse,
            choices=choices,
        )
        self._stats.tokens["reused"] += reuse
        self._send(protocol.started(rid, len(tokens), seq_id))

    def _fork(self, first: Slot) -> list[Slot]:
        """The other choices of a request whose prompt is in: its KV cells copied into
        each kept slot (llama.cpp copies the cache, no second prefill), each choice
        with its own picker (seeded seed + choice, when seeded)."""
        choices = first.choices
        assert choices is not None
        L, memory, op = self._L, self._ctx.memory, choices.op
        forked = []
        for k, seq_id in enumerate(choices.kept, start=1):
            self._cached.pop(seq_id, None)
            L.llama_memory_seq_rm(memory, seq_id, -1, -1)
            L.llama_memory_seq_cp(memory, first.seq_id, seq_id, -1, -1)
            picker = self._picker(first.request_id, op, k)
            assert picker is not None  # it compiled for the first choice
            self._slots[seq_id] = child = Slot(
                seq_id=seq_id,
                request_id=first.request_id,
                prompt=first.prompt,
                max_tokens=first.max_tokens,
                stops=StopMatcher(op.stop),
                picker=picker,
                logprobs=op.logprobs,
                lstrip=op.lstrip,
                scope=op.scope,
                prefilled=len(first.prompt),
                choice=k,
                choices=choices,
            )
            forked.append(child)
        self._kept.difference_update(choices.kept)
        choices.kept = []
        return forked

    def _picker(self, rid: int, op: protocol.Generate, choice: int = 0) -> TokenPicker | None:
        """How the request's `choice` picks its tokens; None (the request refused) when
        it names a token outside the vocabulary or a grammar that does not parse."""
        beyond = [t for t, _ in op.sampling.logit_bias if not 0 <= t < self._n_vocab]
        if beyond:
            message = f"logit_bias names token {beyond[0]}, not in this model's vocabulary."
            self._send(protocol.invalid(rid, message, "logit_bias"))
            return None
        grammar = None
        if op.grammar is not None:
            if self._vocabulary is None:
                self._vocabulary = Vocabulary(self._L, self._vocab)
            try:
                grammar = Grammar(self._vocabulary, op.grammar)
            except ValueError:
                message = "The output format does not compile to a grammar."
                self._send(protocol.invalid(rid, message, "response_format"))
                return None
        sampling = op.sampling
        if choice and sampling.seed is not None:
            sampling = dataclasses.replace(sampling, seed=sampling.seed + choice)
        return TokenPicker(sampling, grammar)

    def _on_token(self, slot: Slot, token: int, row: np.ndarray) -> None:
        if self._L.llama_vocab_is_eog(self._vocab, token):
            self._finish(slot, "stop")
            return
        slot.generated += 1
        if slot.choices is not None:
            slot.choices.generated += 1
        slot.next_token = token
        piece = self._model.detokenize([token], special=True)
        if slot.logprobs is not None:
            slot.pending.append(self._logprob(row, token, piece, slot.logprobs))
        text, stopped = slot.stops.feed(slot.decoder.decode(piece))
        if slot.lstrip:
            text = text.lstrip()
            slot.lstrip = not text
        if text:
            self._send_text(slot, text)
        if stopped:
            self._finish(slot, "stop", flush=False)
        elif slot.generated >= slot.max_tokens:
            self._finish(slot, "length")

    def _logprob(self, row: np.ndarray, token: int, piece: bytes, top: int) -> TokenLogprob:
        """The token's log probability and the `top` most likely tokens' (a stop
        string's tokens are reported with it: they are never emitted)."""
        logprob, alternatives = log_probabilities(row, token, top)
        return (
            piece.decode(errors="replace"),
            list(piece),
            logprob,
            [self._alternative(t, lp) for t, lp in alternatives],
        )

    def _alternative(self, token: int, logprob: float) -> Alternative:
        piece = self._model.detokenize([token], special=True)
        return piece.decode(errors="replace"), list(piece), logprob

    def _send_text(self, slot: Slot, text: str) -> None:
        choices = slot.choices
        generated = slot.generated if choices is None else choices.generated
        pending = slot.take_pending()
        self._send(protocol.token(slot.request_id, text, generated, pending, slot.choice))

    def _finish(self, slot: Slot, reason: str, *, flush: bool = True) -> None:
        """A choice ended; the request ends with its last choice."""
        if flush:
            tail = slot.stops.flush() + slot.decoder.decode(b"", final=True)
            if tail:
                self._send_text(slot, tail)
        rid, prompt, choices = slot.request_id, len(slot.prompt), slot.choices
        if choices is None:
            self._send(protocol.done(rid, reason, prompt, slot.generated))
        else:
            choices.ended[slot.choice] = reason
            n = choices.op.n
            if len(choices.ended) == n:
                reasons = [choices.ended[k] for k in range(n)]
                self._send(protocol.done(rid, reasons[0], prompt, choices.generated, reasons))
        self._release(slot)

    def _abandon(self, request_id: int) -> None:
        """Free every slot of a request that failed (all its choices)."""
        for slot in [s for s in self._slots.values() if s.request_id == request_id]:
            self._release(slot, keep=False)

    def _release(self, slot: Slot, *, keep: bool = True) -> None:
        L = self._L
        if slot.choices is not None and slot.choices.kept:  # gone before its prompt was in
            self._kept.difference_update(slot.choices.kept)
            slot.choices.kept = []
        slot.picker.close()
        if keep and self._prefix_cache and slot.prefilled:
            # Keep the prompt's cells (drop the generated ones) for a later request.
            L.llama_memory_seq_rm(self._ctx.memory, slot.seq_id, slot.prefilled, -1)
            self._cached[slot.seq_id] = (slot.scope, slot.prompt[: slot.prefilled])
        else:
            L.llama_memory_seq_rm(self._ctx.memory, slot.seq_id, -1, -1)
        del self._slots[slot.seq_id]

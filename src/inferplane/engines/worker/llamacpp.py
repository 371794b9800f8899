"""The llama.cpp engine (worker side): continuous batching for GGUF models, on
llama.cpp's low-level batch API.

One context holds `parallel` sequence slots (plus the reserved ones; `parallel: 1` is a
single slot, one request at a time, which decodes as fast as a bare llama.cpp loop).
Each iteration of the scheduler loop:
  1. admits waiting requests into free slots (a new request joins at the next step);
  2. builds one batch: the next token of every decoding sequence, then a chunk of one
     waiting prompt, oldest first (at most `prefill_chunk` tokens per step, so a long
     prompt cannot stall the others' decoding for more than a chunk); when a prompt
     is waiting, every other step is prefill-only, so a new request's first token does
     not wait for a full batched step;
  3. runs one `llama_decode` over the batch;
  4. samples, per sequence: the argmax of its logits row when greedy, else its own
     token picker (`sampler`: penalties, top_p, temperature, seed) on that row, and
     emits, stops or finishes it;
  5. frees the KV cells of finished and cancelled sequences at once.

About twice a second while busy (and once on going idle) the engine reports what its
steps did (`stats` events: counts, seconds, tokens, batch sizes, slots in use) for the
gateway's metrics.

Beside this module: `slots` (a running request's state, and which free slot a new one
takes), `sampler` (how a request picks tokens), `stats` (the step figures reported).
"""

from __future__ import annotations

import logging
import os
import queue
import time
from pathlib import Path
from typing import Any

import numpy as np

from inferplane.config import ModelSpec
from inferplane.engines.worker import protocol
from inferplane.engines.worker.base import EngineBase
from inferplane.engines.worker.grammar import Grammar, scratch_for
from inferplane.engines.worker.protocol import Channel
from inferplane.engines.worker.sampler import TokenPicker, log_probabilities
from inferplane.engines.worker.slots import Slot, pick_slot
from inferplane.engines.worker.stats import REPORT_EVERY_S, StepStats
from inferplane.engines.worker.stops import StopMatcher
from inferplane.events import Alternative, TokenLogprob

log = logging.getLogger(__name__)

# A decode step may be interrupted for a newcomer until this fraction of its graph (as
# many nodes as the last decode step's) has run; later, finishing it is cheaper.
_PREEMPT_BEFORE = 0.8
# What `_build_batch` put in the batch: its token count, the (slot, batch index) pairs
# whose logits are sampled, and the prompt chunk it holds (slot, tokens), if any.
_Built = tuple[int, list[tuple[Slot, int]], tuple[Slot, int] | None]


class LlamaCppEngine(EngineBase):
    def __init__(self, spec: ModelSpec, path: Path):
        super().__init__()
        import llama_cpp as L
        from llama_cpp._internals import LlamaBatch, LlamaContext, LlamaModel
        from llama_cpp._utils import suppress_stdout_stderr

        self._L = L
        self._spec = spec
        self._parallel = spec.slots
        self._n_ctx = spec.context_size
        self._chunk = spec.prefill_chunk
        self._model = LlamaModel(
            path_model=str(path), params=L.llama_model_default_params(), verbose=False
        )
        params = L.llama_context_default_params()
        params.n_ctx = spec.context_size * spec.slots
        params.n_batch = params.n_ubatch = max(512, spec.slots)
        params.n_seq_max = spec.slots
        params.kv_unified = False  # each slot gets its own context_size cells
        params.swa_full = True
        # Every step uses every core, a lone sequence's too (on 2 cores: 1 thread won
        # by a little on an AMD EPYC, 2 won by ~60 % on a Xeon).
        params.n_threads = params.n_threads_batch = spec.threads or os.cpu_count() or 2
        with suppress_stdout_stderr(disable=False):  # llama.cpp's load chatter
            self._ctx = LlamaContext(model=self._model, params=params, verbose=False)
        self._batch = LlamaBatch(n_tokens=params.n_batch, embd=0, n_seq_max=1, verbose=False)
        self._capacity = params.n_batch
        self._vocab = self._model.vocab
        self._n_vocab = L.llama_vocab_n_tokens(self._vocab)
        self._slots: dict[int, Slot] = {}
        self._scratch: np.ndarray | None = None  # the vocabulary, for grammars' masks
        # Prefix reuse: a free sequence slot keeps the KV cells of its last prompt, with
        # that prompt's scope; a new request takes the free slot sharing the longest
        # prefix with its own prompt, within its scope, and prefills only the rest.
        self._prefix_cache = spec.prefix_cache
        self._cached: dict[int, tuple[str, list[int]]] = {}  # free seq -> (scope, tokens)
        self._last_was_prefill = False
        self._stats = StepStats()
        self._reported_slots = 0
        # Preemption: a decode step may be interrupted, before most of it has run, when
        # a new request is waiting for a free slot. The new prompt is then prefilled at once
        # in a step of its own (its first token comes after that one short step, not
        # after the rest of a full batched step), and the interrupted step is redone.
        # Cost: the interrupted part of one step per newcomer.
        # Progress is counted in graph nodes, not time: a newcomer's arrival (the gateway
        # and the worker's reader sharing the cores) slowed the step it arrived in to ~2x
        # its usual length, so a time window had mostly passed by the time it was seen.
        self._nodes = 0  # graph nodes run in the current step
        self._abortable_nodes = 0  # the current step may be interrupted until this many
        self._may_preempt = True
        self._last_decode_nodes = 0
        self._abort_callback = L.ggml_abort_callback(self._should_abort)  # keep a ref
        L.llama_set_abort_callback(self._ctx.ctx, self._abort_callback, None)

    def _should_abort(self, _data: Any) -> bool:
        """llama.cpp asks this between graph nodes of a step (on the engine thread)."""
        self._nodes += 1
        return (
            self._nodes <= self._abortable_nodes
            and len(self._slots) < self._parallel
            and not self._waiting.empty()
        )

    def info(self) -> dict[str, Any]:
        return {"kind": "llm", "context_size": self._n_ctx, "parallel": self._parallel}

    # -- the scheduler loop -------------------------------------------------------------

    def run(self, channel: Channel) -> None:
        self._channel = channel
        while True:
            if not self._slots and (self._stats.phases or self._reported_slots):
                # Going idle: the last figures, with no slot in use (also when the last
                # slot was cancelled before any step since the previous report).
                self._report()
            self._admit(block=not self._slots)
            self._drop_cancelled()
            if self._slots:
                self._step()
                if time.monotonic() - self._stats.sent >= REPORT_EVERY_S:
                    self._report()

    def _report(self) -> None:
        self._reported_slots = len(self._slots)
        self._send(self._stats.report(self._reported_slots))
        self._stats = StepStats()

    def _admit(self, *, block: bool) -> None:
        free = [i for i in range(self._parallel) if i not in self._slots]
        while free:
            try:
                rid, op = self._waiting.get(block=block)
            except queue.Empty:
                return
            block = False
            if self._take_cancelled(rid):
                continue
            if not isinstance(op, protocol.Generate):
                self._send(protocol.failed(rid, "this worker serves text generation only"))
                continue
            tokens = op.tokens
            if not tokens or len(tokens) >= self._n_ctx:
                self._send(protocol.too_long(rid, len(tokens), self._n_ctx))
                continue
            picker = self._picker(rid, op)
            if picker is None:
                continue
            cached = self._cached if self._prefix_cache else None
            seq_id, reuse = pick_slot(free, self._slots, cached, op.scope, tokens)
            free.remove(seq_id)
            self._cached.pop(seq_id, None)
            self._L.llama_memory_seq_rm(self._ctx.memory, seq_id, reuse, -1)
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
            )
            self._stats.tokens["reused"] += reuse
            self._send(protocol.started(rid, len(tokens), seq_id))

    def _picker(self, rid: int, op: protocol.Generate) -> TokenPicker | None:
        """How the request picks its tokens; None (the request refused) when it names a
        token outside the vocabulary or a grammar that does not parse."""
        beyond = [t for t, _ in op.sampling.logit_bias if not 0 <= t < self._n_vocab]
        if beyond:
            message = f"logit_bias names token {beyond[0]}, not in this model's vocabulary."
            self._send(protocol.invalid(rid, message, "logit_bias"))
            return None
        grammar = None
        if op.grammar is not None:
            if self._scratch is None:
                self._scratch = scratch_for(self._n_vocab)
            try:
                grammar = Grammar(self._L, self._vocab, op.grammar, self._scratch)
            except ValueError:
                message = "The output format does not compile to a grammar."
                self._send(protocol.invalid(rid, message, "response_format"))
                return None
        return TokenPicker(op.sampling, grammar)

    def _drop_cancelled(self) -> None:
        cancelled = self._take_all_cancelled()
        if not cancelled:
            return
        for slot in list(self._slots.values()):
            if slot.request_id in cancelled:
                self._release(slot)

    def _step(self) -> None:
        """One step: build the batch, decode it (a newcomer may interrupt that), then
        sample and emit; an interrupted step is rolled back, a failed one fails all."""
        prefilling = any(s.prefilled < len(s.prompt) for s in self._slots.values())
        # A new prompt gets a prefill-only step first, so its first token comes after one
        # small step instead of a full batched one; the next step decodes everyone again,
        # so a long prompt delays the others by at most one chunk per two steps.
        prefill_only = prefilling and not self._last_was_prefill
        self._last_was_prefill = prefill_only
        n, outputs, filling = self._build_batch(prefill_only)
        started = time.perf_counter()
        decoding = not prefill_only and any(s.next_token is not None for s, _ in outputs)
        code = self._decode(decoding=decoding, decode_only=filling is None)
        if code == 2:
            self._roll_back(n, started)
        elif code != 0:
            self._fail_all(code)
        else:
            took = time.perf_counter() - started
            self._sample_and_emit(n, outputs, filling, prefill_only, took)

    def _build_batch(self, prefill_only: bool) -> _Built:
        """Fill the batch: the decode tokens (none in a prefill-only step) in sequence-id
        order, then at most one prompt chunk."""
        batch = self._batch.batch
        n = 0
        outputs: list[tuple[Slot, int]] = []

        def add(token: int, pos: int, seq_id: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq_id
            batch.logits[n] = logits
            n += 1

        # Decode tokens in sequence-id order: llama.cpp groups a batch's tokens by
        # sequence, and an out-of-order batch made steps up to 2x slower (measured: 9
        # sequences, 70 ms in order, 105 to 140 ms with two or three out of place).
        for slot in sorted(self._slots.values(), key=lambda s: s.seq_id):
            if slot.next_token is not None and not prefill_only:
                add(slot.next_token, len(slot.prompt) + slot.generated - 1, slot.seq_id, True)
                outputs.append((slot, n - 1))
        # One prompt per step, oldest first: llama.cpp splits a batch holding several
        # prompts into equal-length pieces per sequence, and with three or more the
        # split changes a sequence's arithmetic (logits off by up to ~0.9, measured),
        # which flips greedy outputs. One prompt plus decode tokens computes exactly what
        # the request computes alone.
        filling: tuple[Slot, int] | None = None  # the prompt chunk: (slot, tokens)
        for slot in self._slots.values():
            left = len(slot.prompt) - slot.prefilled
            if left <= 0:
                continue
            room = min(left, self._chunk, self._capacity - n)
            for i in range(room):
                pos = slot.prefilled + i
                add(slot.prompt[pos], pos, slot.seq_id, pos == len(slot.prompt) - 1)
            if slot.prefilled + room == len(slot.prompt):
                outputs.append((slot, n - 1))
            filling = (slot, room)
            break
        batch.n_tokens = n
        return n, outputs, filling

    def _decode(self, *, decoding: bool, decode_only: bool) -> int:
        """One `llama_decode` over the built batch: 0 done, 2 interrupted for a newcomer,
        anything else failed. `decoding`: it feeds sequences their next token;
        `decode_only`: it holds no prompt chunk."""
        if decoding and decode_only and self._may_preempt:
            # A newcomer may interrupt this step until most of it has run. Only a step of
            # decode tokens alone: it is one ubatch, which llama.cpp rolls back whole.
            self._abortable_nodes = int(self._last_decode_nodes * _PREEMPT_BEFORE)
        self._may_preempt = decoding  # never twice in a row: the batch keeps moving
        self._nodes = 0
        code: int = self._L.llama_decode(self._ctx.ctx, self._batch.batch)
        self._abortable_nodes = 0
        return code

    def _roll_back(self, n: int, started: float) -> None:
        """Undo a step interrupted for a newcomer (its `n` batch tokens)."""
        L, batch = self._L, self._batch.batch
        # llama.cpp dropped this step's KV cells (and, should the batch have been split,
        # the cells of its finished parts are dropped here), so nothing advanced. The
        # next step prefills the newcomer alone, then this step runs again.
        for i in range(n):
            L.llama_memory_seq_rm(self._ctx.memory, batch.seq_id[i][0], batch.pos[i], -1)
        self._stats.aborted(time.perf_counter() - started)

    def _fail_all(self, code: int) -> None:
        """A failed `llama_decode`: every running request ends with an internal error."""
        exc = RuntimeError(f"llama_decode returned {code}")
        log.error("llama_decode failed: %s", exc)
        for slot in list(self._slots.values()):
            self._send(protocol.failed(slot.request_id, str(exc)))
            self._release(slot, keep=False)

    def _sample_and_emit(
        self,
        n: int,
        outputs: list[tuple[Slot, int]],
        filling: tuple[Slot, int] | None,
        prefill_only: bool,
        took: float,
    ) -> None:
        """After a step that ran: count it, then sample each output row and emit it."""
        L = self._L
        if filling is not None:
            filling[0].prefilled += filling[1]
        decoded = sum(1 for slot, _ in outputs if slot.next_token is not None)
        if decoded and not prefill_only and filling is None:
            self._last_decode_nodes = self._nodes
        self._stats.step(took, n - decoded, decoded, len(outputs))
        for slot, index in outputs:
            logits = L.llama_get_logits_ith(self._ctx.ctx, index)
            row = np.ctypeslib.as_array(logits, shape=(self._n_vocab,))
            picker = slot.picker
            try:
                token = int(row.argmax()) if picker.greedy else picker.pick(row)
            except Exception:  # one request's sampling never takes the others down
                log.exception("sampling failed for request %s", slot.request_id)
                self._send(protocol.failed(slot.request_id, "sampling failed"))
                self._release(slot, keep=False)
                continue
            self._on_token(slot, token, row)

    def _on_token(self, slot: Slot, token: int, row: np.ndarray) -> None:
        if self._L.llama_vocab_is_eog(self._vocab, token):
            self._finish(slot, "stop")
            return
        slot.generated += 1
        slot.next_token = token
        piece = self._model.detokenize([token], special=True)
        if slot.logprobs is not None:
            slot.pending.append(self._logprob(row, token, piece, slot.logprobs))
        text, stopped = slot.stops.feed(slot.decoder.decode(piece))
        if slot.lstrip:
            text = text.lstrip()
            slot.lstrip = not text
        if text:
            self._send(protocol.token(slot.request_id, text, slot.generated, slot.take_pending()))
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

    def _finish(self, slot: Slot, reason: str, *, flush: bool = True) -> None:
        if flush:
            tail = slot.stops.flush() + slot.decoder.decode(b"", final=True)
            if tail:
                self._send(
                    protocol.token(slot.request_id, tail, slot.generated, slot.take_pending())
                )
        self._send(protocol.done(slot.request_id, reason, len(slot.prompt), slot.generated))
        self._release(slot)

    def _release(self, slot: Slot, *, keep: bool = True) -> None:
        L = self._L
        slot.picker.close()
        if keep and self._prefix_cache and slot.prefilled:
            # Keep the prompt's cells (drop the generated ones) for a later request.
            L.llama_memory_seq_rm(self._ctx.memory, slot.seq_id, slot.prefilled, -1)
            self._cached[slot.seq_id] = (slot.scope, slot.prompt[: slot.prefilled])
        else:
            L.llama_memory_seq_rm(self._ctx.memory, slot.seq_id, -1, -1)
        del self._slots[slot.seq_id]

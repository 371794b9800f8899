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
from inferplane.engines.worker.grammar import Vocabulary
from inferplane.engines.worker.llamacpp_slots import SlotKeeper
from inferplane.engines.worker.protocol import Channel
from inferplane.engines.worker.slots import Slot
from inferplane.engines.worker.stats import REPORT_EVERY_S, StepStats

log = logging.getLogger(__name__)

# A decode step may be interrupted for a newcomer until this fraction of its graph (as
# many nodes as the last decode step's) has run; later, finishing it is cheaper.
_PREEMPT_BEFORE = 0.8
# What `_build_batch` put in the batch: its token count, the (slot, batch index) pairs
# whose logits are sampled, and the prompt chunk it holds (slot, tokens), if any.
_Built = tuple[int, list[tuple[Slot, int]], tuple[Slot, int] | None]


class LlamaCppEngine(SlotKeeper):
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
        # Sequence slots kept for the choices of requests whose prompt is not in yet,
        # and a request waiting for that many free slots (n > 1).
        self._kept: set[int] = set()
        self._next: tuple[int, protocol.Op] | None = None
        self._vocabulary: Vocabulary | None = None  # the tokens, for grammars' masks
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
        """llama.cpp asks this between graph nodes of a step (on the engine thread).
        Not while a request waits first in line for more slots than are free: nobody
        could be admitted, and every step would be interrupted for nothing."""
        self._nodes += 1
        return (
            self._nodes <= self._abortable_nodes
            and self._next is None
            and len(self._slots) + len(self._kept) < self._parallel
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
        free = [i for i in range(self._parallel) if i not in self._slots and i not in self._kept]
        while free:
            if self._next is not None:
                (rid, op), self._next = self._next, None
            else:
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
            if not 1 <= op.n <= self._parallel:
                self._send(protocol.invalid(rid, f"n is at most {self._parallel} here.", "n"))
                continue
            if op.n > len(free):
                self._next = (rid, op)  # first in line for as many slots as it has choices
                return
            picker = self._picker(rid, op)
            if picker is None:
                continue
            self._start(rid, op, picker, free)

    def _drop_cancelled(self) -> None:
        cancelled = self._take_all_cancelled()
        if not cancelled:
            return
        if self._next is not None and self._next[0] in cancelled:
            self._next = None
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
        for rid in {slot.request_id for slot in self._slots.values()}:
            self._send(protocol.failed(rid, str(exc)))
            self._abandon(rid)

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
        rows: list[tuple[Slot, np.ndarray]] = []
        for slot, index in outputs:
            logits = L.llama_get_logits_ith(self._ctx.ctx, index)
            row = np.ctypeslib.as_array(logits, shape=(self._n_vocab,))
            rows.append((slot, row))
            if slot.choices is not None and slot.choices.kept:
                rows += [(child, row) for child in self._fork(slot)]
        for slot, row in rows:
            if slot.seq_id not in self._slots:
                continue  # its request failed at another of its choices
            picker = slot.picker
            try:
                token = int(row.argmax()) if picker.greedy else picker.pick(row)
            except Exception:  # one request's sampling never takes the others down
                log.exception("sampling failed for request %s", slot.request_id)
                self._send(protocol.failed(slot.request_id, "sampling failed"))
                self._abandon(slot.request_id)
                continue
            self._on_token(slot, token, row)

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
     llama.cpp sampler chain (temperature, top_p,
     penalties, seed) from its logits row, and emits, stops or finishes it;
  5. frees the KV cells of finished and cancelled sequences at once.

About twice a second while busy (and once on going idle) the engine reports what its
steps did (`stats` events: counts, seconds, tokens, batch sizes, slots in use) for the
gateway's metrics.
"""

from __future__ import annotations

import codecs
import itertools
import logging
import os
import queue
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inferplane.config import ModelSpec
from inferplane.engines.worker.base import EngineBase
from inferplane.engines.worker.protocol import Channel, Message
from inferplane.engines.worker.stops import StopMatcher

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    seq_id: int
    request_id: int
    prompt: list[int]
    max_tokens: int
    stops: StopMatcher
    sampler: Any
    lstrip: bool
    scope: str  # whose prompt this is: cached prefixes are reused only within a scope
    prefilled: int = 0  # prompt tokens already in the KV cache
    next_token: int | None = None  # sampled, to be fed at the next step
    generated: int = 0
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )


@dataclass
class _Stats:
    """What the steps did since the last report (deltas), sent as one `stats` event."""

    phases: dict[str, list[float]] = field(default_factory=dict)  # phase -> [steps, s]
    tokens: Counter[str] = field(default_factory=Counter)
    batch_sizes: Counter[int] = field(default_factory=Counter)
    sent: float = field(default_factory=time.monotonic)

    def step(self, seconds: float, prompt_tokens: int, decoded: int, sampled: int) -> None:
        """One step: `decoded` sequences fed their last token, `sampled` got a new one."""
        phase = "mixed" if prompt_tokens and decoded else "decode" if decoded else "prefill"
        entry = self.phases.setdefault(phase, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds
        self.tokens["prompt"] += prompt_tokens
        self.tokens["generated"] += sampled
        if decoded:
            self.batch_sizes[decoded] += 1

    def aborted(self, seconds: float) -> None:
        entry = self.phases.setdefault("aborted", [0, 0.0])
        entry[0] += 1
        entry[1] += seconds

    def report(self, slots_in_use: int) -> Message:
        return {
            "event": "stats",
            "phases": self.phases,
            "tokens": dict(self.tokens),
            "batch_sizes": {str(k): v for k, v in self.batch_sizes.items()},
            "slots_in_use": slots_in_use,
        }


_REPORT_EVERY_S = 0.5
# A decode step may be interrupted for a newcomer until this fraction of its graph (as
# many nodes as the last decode step's) has run; later, finishing it is cheaper.
_PREEMPT_BEFORE = 0.8
# Shorter shared prefixes are recomputed: cheap, and the slot stays free for a longer one.
_MIN_REUSE = 16


def _shared_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two prompts share."""
    pairs = enumerate(zip(a, b, strict=False))
    return next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))


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
        self._slots: dict[int, _Slot] = {}
        # Prefix reuse: a free sequence slot keeps the KV cells of its last prompt, with
        # that prompt's scope; a new request takes the free slot sharing the longest
        # prefix with its own prompt, within its scope, and prefills only the rest.
        self._prefix_cache = spec.prefix_cache
        self._cached: dict[int, tuple[str, list[int]]] = {}  # free seq -> (scope, tokens)
        self._last_was_prefill = False
        self._stats = _Stats()
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
                if time.monotonic() - self._stats.sent >= _REPORT_EVERY_S:
                    self._report()

    def _report(self) -> None:
        self._reported_slots = len(self._slots)
        self._send(self._stats.report(self._reported_slots))
        self._stats = _Stats()

    def _admit(self, *, block: bool) -> None:
        free = [i for i in range(self._parallel) if i not in self._slots]
        while free:
            try:
                msg = self._waiting.get(block=block)
            except queue.Empty:
                return
            block = False
            rid = int(msg["id"])
            if self._take_cancelled(rid):
                continue
            tokens = [int(t) for t in msg["tokens"]]
            if not tokens or len(tokens) >= self._n_ctx:
                self._send(
                    {
                        "id": rid,
                        "event": "error",
                        "kind": "context_length",
                        "prompt_tokens": len(tokens),
                        "context_size": self._n_ctx,
                        "param": "messages",
                    }
                )
                continue
            scope = str(msg.get("scope", ""))
            seq_id, reuse = self._pick_slot(free, scope, tokens)
            free.remove(seq_id)
            self._cached.pop(seq_id, None)
            self._L.llama_memory_seq_rm(self._ctx.memory, seq_id, reuse, -1)
            self._slots[seq_id] = _Slot(
                seq_id=seq_id,
                request_id=rid,
                prompt=tokens,
                max_tokens=min(int(msg["max_tokens"]), self._n_ctx - len(tokens)),
                stops=StopMatcher(list(msg.get("stop") or [])),
                sampler=self._sampler(msg),
                lstrip=bool(msg.get("lstrip")),
                scope=scope,
                prefilled=reuse,
            )
            self._stats.tokens["reused"] += reuse
            self._send({"id": rid, "event": "start", "prompt_tokens": len(tokens), "slot": seq_id})

    def _pick_slot(self, free: list[int], scope: str, tokens: list[int]) -> tuple[int, int]:
        """(free sequence slot, prompt tokens already in its KV cache) for a prompt."""
        best, best_len = None, 0
        if self._prefix_cache:
            for seq in sorted(free, key=self._gaps_with):
                cached_scope, cached = self._cached.get(seq, ("", []))
                if cached_scope != scope:
                    continue
                same = _shared_prefix(cached, tokens)
                if same > best_len:
                    best, best_len = seq, same
        if best is None or best_len < _MIN_REUSE:
            return min(free, key=self._gaps_with), 0
        # At least the prompt's last token is fed again: its logits give the first token.
        return best, min(best_len, len(tokens) - 1)

    def _gaps_with(self, seq: int) -> tuple[int, int]:
        """How fragmented the running sequence ids would be with `seq` added (then the id).

        llama.cpp decodes a batch of sequences with contiguous ids in one piece, and
        splits it where ids have gaps: 8 sequences with one gap took 67 ms a step instead
        of 51, five with ids 0,2,4,6,8 took 99 ms instead of 50 (measured, 2-core Xeon).
        So a new request fills a gap, or extends the run of ids in use.
        """
        ids = sorted([*self._slots, seq])
        runs = 1 + sum(1 for a, b in itertools.pairwise(ids) if b != a + 1)
        return runs, seq

    def _sampler(self, msg: Message) -> Any:
        """The request's llama.cpp sampler chain; None for plain greedy decoding, which
        takes the argmax of the logits row itself: 0.04 ms instead of llama.cpp's 0.8 ms
        (it builds a candidate array over the whole 262k vocabulary first), 11 % of an
        8-sequence step. Both pick the first of equal maxima."""
        L = self._L
        presence = float(msg.get("presence_penalty", 0.0))
        frequency = float(msg.get("frequency_penalty", 0.0))
        temperature = float(msg.get("temperature", 1.0))
        if temperature <= 0 and not (presence or frequency):
            return None
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if presence or frequency:
            L.llama_sampler_chain_add(
                chain,
                L.llama_sampler_init_penalties(self._n_vocab, 64, 1.0, frequency, presence),
            )
        if temperature <= 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            return chain
        seed = msg.get("seed")
        L.llama_sampler_chain_add(
            chain, L.llama_sampler_init_top_p(float(msg.get("top_p", 1.0)), 1)
        )
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(temperature))
        L.llama_sampler_chain_add(
            chain,
            L.llama_sampler_init_dist(
                int(seed) & 0xFFFFFFFF if seed is not None else random.getrandbits(32)
            ),
        )
        return chain

    def _drop_cancelled(self) -> None:
        cancelled = self._take_all_cancelled()
        if not cancelled:
            return
        for slot in list(self._slots.values()):
            if slot.request_id in cancelled:
                self._release(slot)

    def _step(self) -> None:
        """Build one batch (decodes first, then prefill chunks), decode, sample."""
        L, batch = self._L, self._batch.batch
        n = 0
        outputs: list[tuple[_Slot, int]] = []

        def add(token: int, pos: int, seq_id: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq_id
            batch.logits[n] = logits
            n += 1

        prefilling = any(s.prefilled < len(s.prompt) for s in self._slots.values())
        # A new prompt gets a prefill-only step first, so its first token comes after one
        # small step instead of a full batched one; the next step decodes everyone again,
        # so a long prompt delays the others by at most one chunk per two steps.
        prefill_only = prefilling and not self._last_was_prefill
        self._last_was_prefill = prefill_only
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
        filling: tuple[_Slot, int] | None = None  # the prompt chunk: (slot, tokens)
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
        started = time.perf_counter()
        decoding = not prefill_only and any(s.next_token is not None for s, _ in outputs)
        if decoding and filling is None and self._may_preempt:
            # A newcomer may interrupt this step until most of it has run. Only a step of
            # decode tokens alone: it is one ubatch, which llama.cpp rolls back whole.
            self._abortable_nodes = int(self._last_decode_nodes * _PREEMPT_BEFORE)
        self._may_preempt = decoding  # never twice in a row: the batch keeps moving
        self._nodes = 0
        code = L.llama_decode(self._ctx.ctx, batch)
        self._abortable_nodes = 0
        if code == 2:
            # Interrupted for a newcomer; llama.cpp dropped this step's KV cells (and,
            # should the batch have been split, the cells of its finished parts are
            # dropped here), so nothing advanced. The next step prefills the newcomer
            # alone, then this step runs again.
            for i in range(n):
                L.llama_memory_seq_rm(self._ctx.memory, batch.seq_id[i][0], batch.pos[i], -1)
            self._stats.aborted(time.perf_counter() - started)
            return
        if code != 0:
            exc = RuntimeError(f"llama_decode returned {code}")
            log.error("llama_decode failed: %s", exc)
            for slot in list(self._slots.values()):
                self._send(
                    {
                        "id": slot.request_id,
                        "event": "error",
                        "kind": "internal",
                        "message": str(exc),
                    }
                )
                self._release(slot, keep=False)
            return
        took = time.perf_counter() - started
        if filling is not None:
            filling[0].prefilled += filling[1]
        decoded = sum(1 for slot, _ in outputs if slot.next_token is not None)
        if decoded and not prefill_only and filling is None:
            self._last_decode_nodes = self._nodes
        self._stats.step(took, n - decoded, decoded, len(outputs))
        for slot, index in outputs:
            if slot.sampler is None:
                row = L.llama_get_logits_ith(self._ctx.ctx, index)
                token = np.ctypeslib.as_array(row, shape=(self._n_vocab,)).argmax()
            else:
                token = L.llama_sampler_sample(slot.sampler, self._ctx.ctx, index)
            self._on_token(slot, int(token))

    def _on_token(self, slot: _Slot, token: int) -> None:
        if self._L.llama_vocab_is_eog(self._vocab, token):
            self._finish(slot, "stop")
            return
        slot.generated += 1
        slot.next_token = token
        piece = self._model.detokenize([token], special=True)
        text, stopped = slot.stops.feed(slot.decoder.decode(piece))
        if slot.lstrip:
            text = text.lstrip()
            slot.lstrip = not text
        if text:
            self._send({"id": slot.request_id, "event": "token", "text": text, "n": slot.generated})
        if stopped:
            self._finish(slot, "stop", flush=False)
        elif slot.generated >= slot.max_tokens:
            self._finish(slot, "length")

    def _finish(self, slot: _Slot, reason: str, *, flush: bool = True) -> None:
        if flush:
            tail = slot.stops.flush() + slot.decoder.decode(b"", final=True)
            if tail:
                self._send(
                    {"id": slot.request_id, "event": "token", "text": tail, "n": slot.generated}
                )
        self._send(
            {
                "id": slot.request_id,
                "event": "done",
                "finish_reason": reason,
                "prompt_tokens": len(slot.prompt),
                "completion_tokens": slot.generated,
            }
        )
        self._release(slot)

    def _release(self, slot: _Slot, *, keep: bool = True) -> None:
        L = self._L
        if keep and self._prefix_cache and slot.prefilled:
            # Keep the prompt's cells (drop the generated ones) for a later request.
            L.llama_memory_seq_rm(self._ctx.memory, slot.seq_id, slot.prefilled, -1)
            self._cached[slot.seq_id] = (slot.scope, slot.prompt[: slot.prefilled])
        else:
            L.llama_memory_seq_rm(self._ctx.memory, slot.seq_id, -1, -1)
        if slot.sampler is not None:
            L.llama_sampler_free(slot.sampler)
        del self._slots[slot.seq_id]

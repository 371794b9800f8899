"""The llama.cpp engine (worker side), built around a scheduler loop.

The loop (`DecodeLoop.run`) owns the model. Each iteration admits waiting requests and
then performs exactly one decode step for the running sequence, emitting its text. With
llama-cpp-python's single-sequence context one sequence runs at a time (FIFO); the loop's
shape (admit -> step -> emit/finish) is what lets a batched step replace `_step` later,
advancing many sequences per decode, without changing anything around it.
"""

from __future__ import annotations

import codecs
import logging
import random
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferplane.config import ModelSpec
from inferplane.engines.base import EngineBase
from inferplane.engines.protocol import Channel, Message
from inferplane.engines.stops import StopMatcher
from inferplane.errors import ContextLengthExceeded, InvalidRequest

log = logging.getLogger(__name__)


@dataclass
class Sequence:
    id: int
    prompt_tokens: list[int]
    max_tokens: int
    stops: StopMatcher
    tokens: Generator[int, Any, None]
    generated: int = 0
    # Chat replies drop the whitespace a transcript template leaves before the answer.
    lstrip: bool = False
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )


class LlamaCppEngine(EngineBase):
    """Loads a GGUF model and serves generate requests from one scheduler thread."""

    def __init__(self, spec: ModelSpec, path: Path):
        super().__init__()
        from llama_cpp import Llama  # imported here: the gateway process never loads it

        self._spec = spec
        self._llm = Llama(
            model_path=str(path),
            n_ctx=spec.context_size,
            n_threads=spec.threads,
            n_batch=512,
            verbose=False,
        )

    def info(self) -> dict[str, Any]:
        return {"kind": "llm", "context_size": self._llm.n_ctx()}

    # -- the scheduler loop -------------------------------------------------------------

    def run(self, channel: Channel) -> None:
        self._channel = channel
        while True:
            seq = self._admit(self._waiting.get())
            while seq is not None and self._step(seq):
                pass

    def _admit(self, msg: Message) -> Sequence | None:
        rid = int(msg["id"])
        if self._take_cancelled(rid):
            return None
        try:
            seq = self._prepare(msg)
        except InvalidRequest as exc:
            self._send(_error_event(rid, exc))
            return None
        except Exception as exc:
            log.exception("cannot start request %s", rid)
            self._send(_internal_error(rid, exc))
            return None
        self._send({"id": rid, "event": "start", "prompt_tokens": len(seq.prompt_tokens)})
        return seq

    def _prepare(self, msg: Message) -> Sequence:
        """Start a sequence from the gateway's prepared tokens (template and checks done)."""
        llm = self._llm
        tokens = [int(t) for t in msg["tokens"]]
        n_ctx = llm.n_ctx()
        if not tokens or len(tokens) >= n_ctx:
            raise ContextLengthExceeded(prompt_tokens=len(tokens), context_size=n_ctx)
        # Evaluate every prompt from scratch: reusing a cached prefix re-evaluates its last
        # token in a different batch shape, which shifts logits enough to flip greedy
        # choices (measured: temperature 0 gave two different texts). Reproducibility
        # first; prefix caching returns with the batched scheduler.
        llm.reset()  # type: ignore[no-untyped-call]
        seed = msg.get("seed")
        llm.set_seed(int(seed) & 0xFFFFFFFF if seed is not None else random.getrandbits(32))
        generator = llm.generate(
            tokens,
            temp=float(msg.get("temperature", 1.0)),
            top_p=float(msg.get("top_p", 1.0)),
            top_k=0,
            min_p=0.0,
            presence_penalty=float(msg.get("presence_penalty", 0.0)),
            frequency_penalty=float(msg.get("frequency_penalty", 0.0)),
            repeat_penalty=1.0,
        )
        return Sequence(
            id=int(msg["id"]),
            prompt_tokens=tokens,
            max_tokens=min(int(msg["max_tokens"]), n_ctx - len(tokens)),
            stops=StopMatcher(list(msg.get("stop") or [])),
            tokens=generator,
            lstrip=bool(msg.get("lstrip")),
        )

    def _step(self, seq: Sequence) -> bool:
        """One decode step for `seq`. Returns False once the sequence has finished."""
        if self._take_cancelled(seq.id):
            seq.tokens.close()
            return False
        try:
            token = next(seq.tokens)
        except Exception as exc:
            log.exception("decode failed for request %s", seq.id)
            self._send(_internal_error(seq.id, exc))
            return False
        if self._is_end_of_generation(token):
            return self._finish(seq, "stop")
        seq.generated += 1
        raw = self._llm.detokenize([token], special=True)
        text, stopped = seq.stops.feed(seq.decoder.decode(raw))
        if seq.lstrip:
            text = text.lstrip()
            seq.lstrip = not text
        if text:
            self._send({"id": seq.id, "event": "token", "text": text, "n": seq.generated})
        if stopped:
            return self._finish(seq, "stop", flush=False)
        if seq.generated >= seq.max_tokens:
            return self._finish(seq, "length")
        return True

    def _is_end_of_generation(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self._llm._model.vocab, token))

    def _finish(self, seq: Sequence, reason: str, *, flush: bool = True) -> bool:
        seq.tokens.close()
        if flush:
            tail = seq.stops.flush() + seq.decoder.decode(b"", final=True)
            if tail:
                self._send({"id": seq.id, "event": "token", "text": tail, "n": seq.generated})
        self._send(
            {
                "id": seq.id,
                "event": "done",
                "finish_reason": reason,
                "prompt_tokens": len(seq.prompt_tokens),
                "completion_tokens": seq.generated,
            }
        )
        return False


def _error_event(rid: int, exc: InvalidRequest) -> Message:
    if isinstance(exc, ContextLengthExceeded):
        return {
            "id": rid,
            "event": "error",
            "kind": "context_length",
            "param": exc.param,
            "prompt_tokens": exc.prompt_tokens,
            "context_size": exc.context_size,
        }
    return {
        "id": rid,
        "event": "error",
        "kind": "invalid",
        "message": exc.message,
        "param": exc.param,
    }


def _internal_error(rid: int, exc: Exception) -> Message:
    return {"id": rid, "event": "error", "kind": "internal", "message": str(exc)}

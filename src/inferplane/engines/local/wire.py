"""The worker protocol as the gateway reads it: typed events in (the typed requests out,
`Generate` and `Embed`, are in `engines/worker/protocol.py`, which both sides share).

Every message a worker sends about a request is decoded here, once (the wire format is
in `engines/worker/protocol.py`): a generation's messages become the pipeline's events,
an embedding's its vectors, an error the exception the caller will see.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from inferplane.engines.worker.protocol import Message
from inferplane.errors import ContextLengthExceeded, InferplaneError, InvalidRequest
from inferplane.events import Finished, GenerationEvent, Started, TextDelta


@dataclass(frozen=True, slots=True)
class Vectors:
    """An embedding request's result: float32 rows, `dim` wide."""

    data: bytes
    dim: int


def generation_event(msg: Message) -> GenerationEvent | None:
    """A generation's message as its event (None: nothing for the caller); a worker's
    error raises what the caller is told."""
    event = msg["event"]
    if event == "token":
        n, choice = int(msg.get("n", 0)), int(msg.get("choice", 0))
        return TextDelta(msg["text"], n, logprobs=msg.get("logprobs"), choice=choice)
    if event == "start":
        return Started(int(msg["prompt_tokens"]))
    if event == "done":
        prompt, completion = int(msg["prompt_tokens"]), int(msg["completion_tokens"])
        choices = tuple(str(r) for r in msg.get("choices") or ())
        return Finished(msg["finish_reason"], prompt, completion, choices)
    if event == "error":
        raise worker_error(msg)
    return None


def vectors(msg: Message) -> Vectors | None:
    """An embedding's result message as its vectors (None: not the result yet)."""
    if msg["event"] == "error":
        raise worker_error(msg)
    if msg["event"] == "embeddings":
        return Vectors(base64.b64decode(msg["data"]), int(msg["dim"]))
    return None


def worker_error(msg: Message) -> InferplaneError:
    kind = msg.get("kind")
    if kind == "context_length":
        return ContextLengthExceeded(
            prompt_tokens=int(msg["prompt_tokens"]),
            context_size=int(msg["context_size"]),
            param=str(msg.get("param") or "messages"),
        )
    if kind == "invalid":
        return InvalidRequest(str(msg.get("message")), param=msg.get("param"))
    # The worker's own message may hold internals; the client gets a generic one.
    return InferplaneError("The model failed while serving this request.", code="engine_error")

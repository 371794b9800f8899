"""The gateway <-> worker protocol: one JSON object per line over a Unix socket.

Gateway -> worker (`op`):
    {"op": "generate", "id": N, "tokens": [...], "max_tokens", "stop", "lstrip",
     "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"}
    {"op": "embed", "id": N, "input": [str, ...]}
    {"op": "cancel", "id": N}          stop working on request N (client went away)
    {"op": "ping", "id": N}            health check, answered by the socket thread

Worker -> gateway (`event`):
    {"event": "hello", "info": {...}}                sent once, when the model is loaded
    {"id": N, "event": "start", "prompt_tokens": P, "slot": S}
                                                     prompt accepted into sequence slot S
    {"id": N, "event": "token", "text": "...", "n": G}  generated text; G tokens so far
    {"id": N, "event": "done", "finish_reason", "prompt_tokens", "completion_tokens"}
    {"id": N, "event": "embeddings", "data": base64 float32, "dim": D}
    {"id": N, "event": "error", "kind": "context_length"|"invalid"|"internal", ...}
    {"id": N, "event": "pong"}
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

Message = dict[str, Any]


def encode(msg: Message) -> bytes:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def decode(line: bytes) -> Message:
    msg = json.loads(line)
    if not isinstance(msg, dict):
        raise ValueError("protocol message is not an object")
    return msg


# The worker's messages about a request, built in one place (the gateway decodes them in
# `engines/local/wire.py`).


def started(rid: int, prompt_tokens: int, slot: int) -> Message:
    return {"id": rid, "event": "start", "prompt_tokens": prompt_tokens, "slot": slot}


def token(rid: int, text: str, generated: int) -> Message:
    return {"id": rid, "event": "token", "text": text, "n": generated}


def done(rid: int, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> Message:
    return {
        "id": rid,
        "event": "done",
        "finish_reason": finish_reason,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
    }


def embeddings(rid: int, data: str, dim: int) -> Message:
    return {"id": rid, "event": "embeddings", "dim": dim, "data": data}


def too_long(rid: int, prompt_tokens: int, context_size: int) -> Message:
    return {
        "id": rid,
        "event": "error",
        "kind": "context_length",
        "prompt_tokens": prompt_tokens,
        "context_size": context_size,
        "param": "messages",
    }


def failed(rid: int, message: str) -> Message:
    """An internal failure (the gateway tells its caller a generic message)."""
    return {"id": rid, "event": "error", "kind": "internal", "message": message}


class Channel:
    """Worker side of the socket: thread-safe sends, a blocking iterator of messages."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._lock = threading.Lock()
        self._file = sock.makefile("rb")

    def send(self, msg: Message) -> None:
        data = encode(msg)
        # If the gateway went away, the reader sees EOF and the worker exits.
        with self._lock, contextlib.suppress(OSError):
            self._sock.sendall(data)

    def messages(self) -> Iterator[Message]:
        for line in self._file:
            yield decode(line)

"""The gateway <-> worker protocol: one JSON object per line over a Unix socket.

Gateway -> worker (`op`; `Generate` and `Embed` below, sent with `wire`):
    {"op": "generate", "id": N, "tokens": [...], "max_tokens", "stop", "lstrip",
     "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "top_k",
     "min_p", "repetition_penalty", "logit_bias": {"token id": bias}, "scope",
     "logprobs": null or how many alternatives per token, "grammar": null or GBNF}
    {"op": "embed", "id": N, "input": [str, ...]}
    {"op": "cancel", "id": N}          stop working on request N (client went away)
    {"op": "ping", "id": N}            health check, answered by the socket thread

Worker -> gateway (`event`):
    {"event": "hello", "info": {...}}                sent once, when the model is loaded
    {"id": N, "event": "start", "prompt_tokens": P, "slot": S}
                                                     prompt accepted into sequence slot S
    {"id": N, "event": "token", "text": "...", "n": G}  generated text; G tokens so far
        (+ "logprobs": [[token, bytes, logprob, [[token, bytes, logprob], ...]], ...]
         for the tokens it holds, when the request asked for them)
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from inferplane.events import TokenLogprob

Message = dict[str, Any]


def encode(msg: Message) -> bytes:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def decode(line: bytes) -> Message:
    msg = json.loads(line)
    if not isinstance(msg, dict):
        raise ValueError("protocol message is not an object")
    return msg


# The gateway's requests, typed: built by the gateway (`engines/local/`), read back by
# the worker with `parse`. The id travels beside an op, not in it: the connection
# (`engines/local/client.py`) numbers the requests it sends.


@dataclass(frozen=True, slots=True)
class Sampling:
    """How a generation picks its tokens (OpenAI's parameters, already validated)."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # The open servers' extensions (vLLM, llama.cpp's server): off at these values.
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias), by token id

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> Sampling:
        """From a request's sampling parameters; one absent or null takes its default.
        `logit_bias` maps token ids (as OpenAI's JSON has them: strings) to a bias."""
        bias = params.get("logit_bias") or {}
        return cls(
            temperature=float(_given(params, "temperature", 1.0)),
            top_p=float(_given(params, "top_p", 1.0)),
            seed=None if params.get("seed") is None else int(params["seed"]),
            presence_penalty=float(_given(params, "presence_penalty", 0.0)),
            frequency_penalty=float(_given(params, "frequency_penalty", 0.0)),
            top_k=int(_given(params, "top_k", 0)),
            min_p=float(_given(params, "min_p", 0.0)),
            repetition_penalty=float(_given(params, "repetition_penalty", 1.0)),
            logit_bias=tuple(sorted((int(t), float(b)) for t, b in bias.items())),
        )


@dataclass(frozen=True, slots=True)
class Generate:
    tokens: list[int]  # the prompt, tokenized
    max_tokens: int
    stop: list[str]
    lstrip: bool  # drop the reply's leading whitespace (chat)
    sampling: Sampling
    scope: str  # who may reuse the prompt's cached prefix
    logprobs: int | None = None  # report each token's log probability and this many others
    grammar: str | None = None  # GBNF the output must follow (structured outputs)
    n: int = 1  # choices: sequences forked from the one prefilled prompt


@dataclass(frozen=True, slots=True)
class Embed:
    input: list[str]


Op = Generate | Embed


def wire(op: Op, rid: int) -> Message:
    """Request `rid` as its wire message."""
    if isinstance(op, Embed):
        return {"op": "embed", "id": rid, "input": op.input}
    s = op.sampling
    return {
        "op": "generate",
        "id": rid,
        "tokens": op.tokens,
        "max_tokens": op.max_tokens,
        "stop": op.stop,
        "lstrip": op.lstrip,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "seed": s.seed,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "top_k": s.top_k,
        "min_p": s.min_p,
        "repetition_penalty": s.repetition_penalty,
        "logit_bias": {str(t): b for t, b in s.logit_bias},
        "scope": op.scope,
        "logprobs": op.logprobs,
        "grammar": op.grammar,
        "n": op.n,
    }


def parse(msg: Message) -> Op:
    """A `generate` or `embed` message as its op (the worker's side of `wire`); a message
    of another shape raises ValueError."""
    try:
        if msg["op"] == "embed":
            return Embed([str(text) for text in msg["input"]])
        if msg["op"] == "generate":
            return Generate(
                tokens=[int(t) for t in msg["tokens"]],
                max_tokens=int(msg["max_tokens"]),
                stop=[str(s) for s in msg.get("stop") or []],
                lstrip=bool(msg.get("lstrip")),
                sampling=Sampling.of(msg),
                scope=str(msg.get("scope") or ""),
                logprobs=None if msg.get("logprobs") is None else int(msg["logprobs"]),
                grammar=None if msg.get("grammar") is None else str(msg["grammar"]),
                n=int(msg.get("n") or 1),
            )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed {msg.get('op')!r} request: {exc!r}") from None
    raise ValueError(f"unknown op {msg.get('op')!r}")


def _given(params: Mapping[str, Any], name: str, default: float) -> Any:
    value = params.get(name)
    return default if value is None else value


# The worker's messages about a request, built in one place (the gateway decodes them in
# `engines/local/wire.py`).


def started(rid: int, prompt_tokens: int, slot: int) -> Message:
    return {"id": rid, "event": "start", "prompt_tokens": prompt_tokens, "slot": slot}


def token(
    rid: int,
    text: str,
    generated: int,
    logprobs: list[TokenLogprob] | None = None,
    choice: int = 0,
) -> Message:
    """Generated text of a choice; with `logprobs`, those of the tokens it holds (since
    the last). `generated`: the request's tokens so far, over all its choices."""
    msg: Message = {"id": rid, "event": "token", "text": text, "n": generated}
    if logprobs is not None:
        msg["logprobs"] = logprobs
    if choice:
        msg["choice"] = choice
    return msg


def done(
    rid: int,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    choices: list[str] | None = None,
) -> Message:
    """The request's end: the first choice's finish reason, and with several choices
    each one's (`choices`); the completion tokens of all."""
    msg: Message = {
        "id": rid,
        "event": "done",
        "finish_reason": finish_reason,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
    }
    if choices is not None:
        msg["choices"] = choices
    return msg


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


def invalid(rid: int, message: str, param: str) -> Message:
    """The request asks for what cannot be (the client's 400, naming `param`)."""
    return {"id": rid, "event": "error", "kind": "invalid", "message": message, "param": param}


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

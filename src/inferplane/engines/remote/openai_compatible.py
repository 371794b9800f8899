"""Remote deployments speaking OpenAI's API: vLLM, TGI, llama.cpp's server, Ollama,
OpenAI itself, over one keep-alive connection pool per deployment (`upstream_http`).

A generation becomes the pipeline's events (`Started`, `TextDelta`s with their tokens'
log probabilities when asked (`logprobs`), `ToolCallDelta`s, `Finished`); every failure
becomes an `UpstreamError` saying why, so routing can decide whether to retry here, fail
over, or give up. The API key never appears in a log line or an error.
"""

from __future__ import annotations

import dataclasses
import email.utils
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from inferplane.config.routes import RemoteDeployment
from inferplane.engines.remote import logprobs
from inferplane.engines.remote.base import RemoteEngine
from inferplane.engines.remote.upstream_http import ANY_EGRESS, Egress, UpstreamHTTP, read_all
from inferplane.errors import UpstreamError
from inferplane.events import (
    Finished,
    GenerationEvent,
    Started,
    TextDelta,
    ToolCallDelta,
    in_hand,
)

_PATHS = {"chat.completions": "chat/completions", "completions": "completions"}


class OpenAICompatibleEngine(RemoteEngine):
    def __init__(self, spec: RemoteDeployment, api_key: str | None, egress: Egress = ANY_EGRESS):
        self.spec = spec
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = UpstreamHTTP(spec, headers, egress)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def check(self) -> bool:
        """Active health check: the upstream answers its model list."""
        return await self._http.get_ok("models", self.spec.connect_timeout_s)

    async def request(
        self,
        endpoint: str,
        prompt_input: dict[str, Any],
        sampling: dict[str, Any],
        *,
        stream: bool,
        prompt_estimate: int,
    ) -> AsyncIterator[GenerationEvent]:
        chat = endpoint == "chat.completions"
        alternatives = sampling.get("logprobs")  # how many, with each token's log probability
        body: dict[str, Any] = {"model": self.spec.model, "stream": stream}
        body.update({k: v for k, v in prompt_input.items() if v is not None})
        body.update({k: v for k, v in sampling.items() if v is not None and k != "logprobs"})
        if alternatives is not None:
            body.update(logprobs.asked(alternatives, chat))
        if not stream:
            status, headers, content = await self._http.post(_PATHS[endpoint], body)
            if status != 200:
                raise status_error(status, headers, content)
            for event in _whole(parse_json(content), chat, alternatives, prompt_estimate):
                yield event
            return
        body["stream_options"] = {"include_usage": True}
        # The stream is opened here, not in a helper generator: closing this generator
        # (a caller gone) then closes the upstream connection at once.
        async with self._http.stream(_PATHS[endpoint], body) as (status, headers, batches):
            if status != 200:
                raise status_error(status, headers, await read_all(batches))
            yield Started(prompt_estimate)
            seen = _Stream(chat, alternatives)
            async for batch in batches:
                texts, failure = seen.read(batch)
                for event in in_hand(texts, then_more=seen.done):  # after [DONE]: `Finished`
                    yield event
                if failure is not None:
                    raise failure
                if seen.done:
                    break
            else:
                if not seen.finishes:
                    raise UpstreamError("The upstream's stream ended early.", reason="stream")
            yield seen.finished(prompt_estimate)


@dataclass
class _Stream:
    """What an upstream's SSE stream has said so far."""

    chat: bool  # chat completions (texts in `delta.content`) or completions (`text`)
    alternatives: int | None  # log probabilities asked, with this many alternatives
    pieces: int = 0
    calls: set[tuple[int, int]] = field(default_factory=set)  # (answer, call) begun
    finishes: dict[int, str] = field(default_factory=dict)  # by answer (`n` > 1)
    usage: dict[str, Any] | None = None
    done: bool = False  # `data: [DONE]` seen

    def read(self, batch: list[bytes]) -> tuple[list[GenerationEvent], UpstreamError | None]:
        """The texts of one batch of lines, all parsed before any is passed on, and the
        upstream's mid-stream error, if it sent one."""
        texts: list[GenerationEvent] = []
        for line in batch:
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                self.done = True
                break
            chunk = parse_json(data)
            if "error" in chunk:
                message = f"The upstream failed mid-stream: {_message(chunk)}"
                return texts, UpstreamError(message, reason="stream")
            self.usage = chunk.get("usage") or self.usage
            for choice in chunk.get("choices") or []:
                texts.extend(self._choice(choice))
                if choice.get("finish_reason"):
                    self.finishes[_index(choice)] = str(choice["finish_reason"])
        return texts, None

    def _choice(self, choice: dict[str, Any]) -> list[GenerationEvent]:
        delta = choice.get("delta") or {}
        text = delta.get("content") if self.chat else choice.get("text")
        entries = None
        if self.alternatives is not None:
            entries = logprobs.read(choice, self.chat, self.alternatives)
        out: list[GenerationEvent] = []
        answer = _index(choice)
        if text or entries:
            self.pieces += 1
            out.append(
                TextDelta(text or "", self.pieces, more=True, logprobs=entries, choice=answer)
            )
        for call in (delta.get("tool_calls") or []) if self.chat else ():
            piece = _tool_call_delta(call, self.pieces + 1, answer, more=True)
            if (answer, piece.index) in self.calls:
                # Some servers (llama-cpp-python) repeat the id and name in every piece:
                # OpenAI's clients would join the names.
                piece = dataclasses.replace(piece, id=None, name=None)
            if piece.arguments or piece.name is not None:
                self.calls.add((answer, piece.index))
                self.pieces += 1
                out.append(piece)
        return out

    def finished(self, prompt_estimate: int) -> Finished:
        """The closing event, counts from the upstream's usage where it sent them."""
        reasons = [self.finishes.get(k, "stop") for k in range(max(self.finishes, default=0) + 1)]
        if reasons[0] == "content_filter" and not self.pieces:
            raise UpstreamError("The upstream refused the request.", reason="content_filter")
        usage = self.usage or {}
        return Finished(
            reasons[0],
            int(usage.get("prompt_tokens") or prompt_estimate),
            int(usage.get("completion_tokens") or self.pieces),
            tuple(reasons) if len(reasons) > 1 else (),
        )


def _whole(
    data: dict[str, Any], chat: bool, alternatives: int | None, prompt_estimate: int
) -> list[GenerationEvent]:
    choices = sorted(data.get("choices") or [{}], key=_index)
    usage = data.get("usage") or {}
    prompt = int(usage.get("prompt_tokens") or prompt_estimate)
    events: list[GenerationEvent] = [Started(prompt)]
    answers = [_answer(choice, chat) for choice in choices]
    said = sum(1 for _, text, calls in answers if text or calls)
    completion = int(usage.get("completion_tokens") or said)
    reasons = [choice.get("finish_reason") or "stop" for choice in choices]
    if reasons[0] == "content_filter" and not said:
        raise UpstreamError("The upstream refused the request.", reason="content_filter")
    for choice, (answer, text, calls) in zip(choices, answers, strict=True):
        entries = None if alternatives is None else logprobs.read(choice, chat, alternatives)
        if text or entries:
            events.append(TextDelta(text, completion, logprobs=entries, choice=answer))
        for i, call in enumerate(calls):
            whole = {"index": i, **call} if isinstance(call, dict) else call
            events.append(_tool_call_delta(whole, completion, answer))
    several = tuple(reasons) if len(reasons) > 1 else ()
    events.append(Finished(reasons[0], prompt, completion, several))
    return events


def _answer(choice: dict[str, Any], chat: bool) -> tuple[int, str, list[Any]]:
    """A whole answer's (index, text, tool calls)."""
    message = choice.get("message") or {}
    text = (message.get("content") if chat else choice.get("text")) or ""
    calls = (message.get("tool_calls") or []) if chat else []
    return _index(choice), text, calls


def _index(choice: dict[str, Any]) -> int:
    """Which answer a choice is (`n` > 1); a malformed index is the upstream's fault."""
    index = choice.get("index", 0) if isinstance(choice, dict) else None
    if not isinstance(index, int) or not 0 <= index < 128:
        raise UpstreamError("The upstream sent a malformed choice.", reason="server_error")
    return index


def _tool_call_delta(
    call: Any, tokens_so_far: int, answer: int = 0, *, more: bool = False
) -> ToolCallDelta:
    """An upstream's tool call (a whole one, or a streamed piece of one), as it came."""
    function = call.get("function") or {} if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(call.get("index", 0), int):
        raise UpstreamError("The upstream sent a malformed tool call.", reason="server_error")
    arguments = function.get("arguments") or ""
    if not isinstance(arguments, str):  # some servers send the object itself
        arguments = orjson.dumps(arguments).decode()
    return ToolCallDelta(
        call.get("index", 0),
        arguments,
        id=call.get("id"),
        name=function.get("name"),
        tokens_so_far=tokens_so_far,
        more=more,
        choice=answer,
    )


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError("The upstream sent invalid JSON.", reason="server_error") from exc
    if not isinstance(data, dict):
        raise UpstreamError("The upstream sent an unexpected body.", reason="server_error")
    return data


def _message(data: dict[str, Any]) -> str:
    err = data.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or err.get("code") or "")[:500]
    return str(err or data.get("detail") or "")[:500]


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def status_error(status: int, headers: Mapping[str, str], content: bytes) -> UpstreamError:
    try:
        data = orjson.loads(content) if content else {}
    except orjson.JSONDecodeError:
        data = {}
    message = _message(data) if isinstance(data, dict) else ""
    err = data.get("error") if isinstance(data, dict) else None
    code = str(err.get("code") or "") if isinstance(err, dict) else ""
    retry_after = retry_after_seconds(headers.get("retry-after"))
    lowered = message.lower()
    if status == 429:
        reason = "rate_limited"
    elif status >= 500:
        reason = "server_error"
    elif (
        code == "context_length_exceeded"
        or "context length" in lowered
        or ("maximum context" in lowered)
    ):
        reason = "context_length"
    elif code == "content_filter" or "content filter" in lowered:
        reason = "content_filter"
    elif status in (401, 403, 404):
        reason = "server_error"  # our configuration (key, model name): another may work
    else:
        reason = "invalid"
    # Only a refusal of the request itself passes the upstream's words on to the caller;
    # server-side failures can carry internals.
    told = message if reason in ("invalid", "context_length", "content_filter") else ""
    return UpstreamError(
        f"Upstream answered {status}: {told}" if told else f"Upstream answered {status}.",
        reason=reason,
        upstream_status=status,
        retry_after=retry_after,
    )

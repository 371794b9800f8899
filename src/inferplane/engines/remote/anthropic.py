"""Remote deployments speaking Anthropic's Messages API, translated to and from OpenAI's.

Requests are translated in `anthropic_request`. Responses: text blocks become the
message's content and `tool_use` blocks its tool calls (their `input` as arguments JSON
text; a call's index is its place among the calls, not among the blocks); in JSON mode
the forced tool's input is the content. `stop_reason` maps to OpenAI's finish reasons
(end_turn and stop_sequence -> stop, max_tokens -> length, tool_use -> tool_calls, or
stop in JSON mode, refusal -> content_filter); usage comes from the API's counts.
Streams: `content_block_start` of a tool_use block gives a call's id and name, and
`content_block_delta` events its arguments (`input_json_delta`) or text (`text_delta`);
an `error` event ends it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from inferplane.config.routes import RemoteDeployment
from inferplane.engines.remote import anthropic_request
from inferplane.engines.remote.base import RemoteEngine
from inferplane.engines.remote.openai_compatible import parse_json, status_error
from inferplane.engines.remote.upstream_http import ANY_EGRESS, Egress, UpstreamHTTP, read_all
from inferplane.errors import UnsupportedParameter, UpstreamError
from inferplane.events import (
    Finished,
    GenerationEvent,
    Started,
    TextDelta,
    ToolCallDelta,
    in_hand,
)

API_VERSION = "2023-06-01"
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "refusal": "content_filter",
    "tool_use": "tool_calls",
}


class AnthropicEngine(RemoteEngine):
    def __init__(
        self,
        spec: RemoteDeployment,
        api_key: str | None,
        default_max_tokens: int,
        egress: Egress = ANY_EGRESS,
    ):
        self.spec = spec
        self._default_max_tokens = default_max_tokens
        headers = {"anthropic-version": API_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        self._http = UpstreamHTTP(spec, headers, egress)
        self._path = "messages" if spec.base_url.rstrip("/").endswith("/v1") else "v1/messages"

    async def check(self) -> bool:
        """No active check (the Messages API has no cheap, keyless endpoint to ask): an
        open breaker waits out its cooldown."""
        return False

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        endpoint: str,
        prompt_input: dict[str, Any],
        sampling: dict[str, Any],
        *,
        stream: bool,
        prompt_estimate: int,
    ) -> AsyncIterator[GenerationEvent]:
        body = anthropic_request.body(
            self.spec.model,
            prompt_input,
            sampling,
            stream=stream,
            default_max_tokens=self._default_max_tokens,
        )
        json_tool = anthropic_request.json_tool(sampling)
        if stream:
            async for event in self._stream(body, _Stream(prompt_estimate, json_tool)):
                yield event
            return
        status, headers, content = await self._http.post(self._path, body)
        if status != 200:
            raise status_error(status, headers, content)
        for event in _whole(parse_json(content), json_tool, prompt_estimate):
            yield event

    def refusal(
        self, prompt: Mapping[str, Any], sampling: Mapping[str, Any]
    ) -> UnsupportedParameter | None:
        """Anthropic's Messages API has no seed, no penalties, no logit bias, no min-p
        and no log probabilities (it has top-k), one answer a request, and its
        temperature ends at 1 (OpenAI's at 2); some requests have no translation
        (`anthropic_request.refusal`)."""
        if sampling.get("logprobs") is not None:
            return UnsupportedParameter("logprobs")
        if (sampling.get("n") or 1) > 1:
            return UnsupportedParameter("n", "above 1")
        if sampling.get("seed") is not None:
            return UnsupportedParameter("seed")
        for name in ("presence_penalty", "frequency_penalty", "logit_bias", "min_p"):
            if sampling.get(name):
                return UnsupportedParameter(name)
        if sampling.get("repetition_penalty", 1) != 1:
            return UnsupportedParameter("repetition_penalty")
        if (sampling.get("temperature") or 0) > 1:
            return UnsupportedParameter("temperature", "above 1")
        return anthropic_request.refusal(prompt, sampling)

    async def _stream(self, body: dict[str, Any], seen: _Stream) -> AsyncIterator[GenerationEvent]:
        async with self._http.stream(self._path, body) as (status, headers, batches):
            if status != 200:
                raise status_error(status, headers, await read_all(batches))
            async for batch in batches:
                events, failure = seen.read(batch)
                for out in in_hand(events, then_more=seen.ended):  # then `Finished`
                    yield out
                if failure is not None:
                    raise failure
                if seen.ended:
                    break
            if not (seen.started and seen.ended):
                raise UpstreamError("The upstream's stream ended early.", reason="stream")
            yield seen.finished()


def _whole(
    data: dict[str, Any], json_tool: str | None, prompt_estimate: int
) -> list[GenerationEvent]:
    usage = data.get("usage") or {}
    prompt = int(usage.get("input_tokens") or prompt_estimate)
    completion = int(usage.get("output_tokens") or 0)
    texts: list[str] = []
    calls: list[GenerationEvent] = []
    for block in data.get("content") or []:
        # In JSON mode the answer is the forced call's input alone (the API writes no
        # text before a call it was made to make).
        if block.get("type") == "text" and json_tool is None:
            texts.append(str(block.get("text") or ""))
        elif block.get("type") == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            if block.get("name") == json_tool:
                texts.append(arguments)
            else:
                call = ToolCallDelta(
                    len(calls),
                    arguments,
                    id=block.get("id"),
                    name=block.get("name"),
                    tokens_so_far=completion,
                )
                calls.append(call)
    text = "".join(texts)
    finish = _finish(data.get("stop_reason"), bool(text or calls), json_tool)
    events: list[GenerationEvent] = [Started(prompt)]
    if text:
        events.append(TextDelta(text, completion))
    events.extend(calls)
    events.append(Finished(finish, prompt, completion))
    return events


@dataclass
class _Stream:
    """What a Messages API event stream has said so far."""

    prompt: int  # the estimate, until `message_start` says
    json_tool: str | None  # JSON mode: the forced tool, whose input is the answer's text
    pieces: int = 0
    completion: int | None = None
    stop_reason: str | None = None
    started: bool = False
    ended: bool = False  # `message_stop` seen
    calls: dict[int, int] = field(default_factory=dict)  # block index -> tool call index
    answer: set[int] = field(default_factory=set)  # blocks of the JSON mode tool's input
    argued: set[int] = field(default_factory=set)  # tool blocks that sent some input

    def read(self, batch: list[bytes]) -> tuple[list[GenerationEvent], UpstreamError | None]:
        """The events of one batch of lines, all parsed before any is passed on, and the
        upstream's mid-stream error, if it sent one."""
        events: list[GenerationEvent] = []
        for line in batch:
            if not line.startswith(b"data:"):
                continue
            event = parse_json(line[5:].strip())
            kind = event.get("type")
            if kind == "error":
                err = event.get("error") or {}
                overloaded = err.get("type") in ("overloaded_error", "api_error")
                return events, UpstreamError(
                    f"The upstream failed mid-stream ({err.get('type')}).",
                    reason="server_error" if overloaded else "stream",
                )
            if kind == "message_stop":
                self.ended = True
                break
            out = self._event(kind, event)
            if out is not None:
                events.append(out)
        return events, None

    def _event(self, kind: Any, event: dict[str, Any]) -> GenerationEvent | None:
        if kind == "message_start":
            usage = (event.get("message") or {}).get("usage") or {}
            self.prompt = int(usage.get("input_tokens") or self.prompt)
            self.started = True
            return Started(self.prompt)
        if kind == "content_block_start":
            return self._block_start(event.get("index"), event.get("content_block") or {})
        if kind == "content_block_delta":
            return self._delta(event.get("index"), event.get("delta") or {})
        if kind == "content_block_stop":
            return self._block_stop(event.get("index"))
        if kind == "message_delta":
            self.stop_reason = (event.get("delta") or {}).get("stop_reason") or self.stop_reason
            self.completion = (event.get("usage") or {}).get("output_tokens") or self.completion
        return None

    def _block_start(self, index: Any, block: dict[str, Any]) -> GenerationEvent | None:
        if block.get("type") != "tool_use":
            return None
        if block.get("name") == self.json_tool:
            self.answer.add(index)
            return None
        self.calls[index] = len(self.calls)
        return ToolCallDelta(
            self.calls[index],
            "",
            id=block.get("id"),
            name=block.get("name"),
            tokens_so_far=self.pieces,
            more=True,
        )

    def _delta(self, index: Any, delta: dict[str, Any]) -> GenerationEvent | None:
        if delta.get("type") == "text_delta" and delta.get("text") and self.json_tool is None:
            self.pieces += 1
            return TextDelta(delta["text"], self.pieces, more=True)
        json_piece = delta.get("partial_json") if delta.get("type") == "input_json_delta" else None
        if not json_piece:
            return None
        self.pieces += 1
        self.argued.add(index)
        if index in self.answer:
            return TextDelta(json_piece, self.pieces, more=True)
        if index in self.calls:
            return ToolCallDelta(
                self.calls[index], json_piece, tokens_so_far=self.pieces, more=True
            )
        return None

    def _block_stop(self, index: Any) -> GenerationEvent | None:
        """A tool block that sent no input (Claude sends only an empty `partial_json`
        for a call without arguments): its arguments are `{}`, as a whole answer's."""
        if index in self.argued or not (index in self.calls or index in self.answer):
            return None
        self.argued.add(index)
        if index in self.answer:
            return TextDelta("{}", self.pieces, more=True)
        return ToolCallDelta(self.calls[index], "{}", tokens_so_far=self.pieces, more=True)

    def finished(self) -> Finished:
        finish = _finish(self.stop_reason, bool(self.pieces or self.calls), self.json_tool)
        return Finished(finish, self.prompt, int(self.completion or self.pieces))


def _finish(stop_reason: Any, any_output: bool, json_tool: str | None) -> str:
    if json_tool is not None and stop_reason == "tool_use":
        return "stop"  # the forced call is the answer
    finish = _FINISH.get(str(stop_reason), "stop")
    if finish == "content_filter" and not any_output:
        raise UpstreamError("The upstream refused the request.", reason="content_filter")
    return finish

"""Remote deployments speaking Anthropic's Messages API, translated to and from OpenAI's.

Requests: system and developer turns become the `system` parameter; the other turns
alternate user/assistant (consecutive turns of one role are joined); a text completion's
prompt is one user turn; `stop` becomes `stop_sequences`; `max_tokens` is required there,
so the alias's default fills it in. Responses: text blocks become the message content,
`stop_reason` maps to OpenAI's finish reasons (end_turn and stop_sequence -> stop,
max_tokens -> length, refusal -> content_filter), usage comes from the API's counts.
Streams: `content_block_delta` text deltas become tokens; an `error` event ends it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from inferplane.config.routes import RemoteDeployment
from inferplane.engines.remote.base import RemoteEngine
from inferplane.engines.remote.openai_compatible import parse_json, status_error
from inferplane.engines.remote.upstream_http import ANY_EGRESS, Egress, UpstreamHTTP, read_all
from inferplane.errors import UnsupportedParameter, UpstreamError
from inferplane.events import (
    Finished,
    GenerationEvent,
    Started,
    TextDelta,
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
        body = self._body(prompt_input, sampling, stream)
        if stream:
            async for event in self._stream(body, prompt_estimate):
                yield event
            return
        status, headers, content = await self._http.post(self._path, body)
        if status != 200:
            raise status_error(status, headers, content)
        data = parse_json(content)
        text = "".join(
            str(block.get("text") or "")
            for block in data.get("content") or []
            if block.get("type") == "text"
        )
        finish = _finish(data.get("stop_reason"), bool(text))
        usage = data.get("usage") or {}
        prompt = int(usage.get("input_tokens") or prompt_estimate)
        completion = int(usage.get("output_tokens") or 0)
        yield Started(prompt)
        if text:
            yield TextDelta(text, completion)
        yield Finished(finish, prompt, completion)

    def refusal(
        self, prompt: Mapping[str, Any], sampling: Mapping[str, Any]
    ) -> UnsupportedParameter | None:
        """Anthropic's Messages API has no seed, no penalties, no logit bias, no min-p
        and no response format (it has top-k), and its temperature ends at 1 (OpenAI's
        at 2). Tools are not translated to its form (yet)."""
        refused = super().refusal(prompt, sampling)
        if refused is not None:
            return refused
        if prompt.get("tools") or any(
            m.get("tool_calls") or m["role"] == "tool" for m in prompt.get("messages") or []
        ):
            return UnsupportedParameter("tools")
        if sampling.get("seed") is not None:
            return UnsupportedParameter("seed")
        for name in (
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
            "min_p",
            "response_format",
        ):
            if sampling.get(name):
                return UnsupportedParameter(name)
        if sampling.get("repetition_penalty", 1) != 1:
            return UnsupportedParameter("repetition_penalty")
        if (sampling.get("temperature") or 0) > 1:
            return UnsupportedParameter("temperature", "above 1")
        return None

    def _body(
        self, prompt_input: dict[str, Any], sampling: dict[str, Any], stream: bool
    ) -> dict[str, Any]:
        system: list[str] = []
        turns: list[dict[str, str]] = []
        if "messages" in prompt_input:
            for msg in prompt_input["messages"]:
                role, content = msg["role"], str(msg.get("content") or "")
                if role in ("system", "developer"):
                    system.append(content)
                    continue
                role = "assistant" if role == "assistant" else "user"
                if turns and turns[-1]["role"] == role:
                    turns[-1]["content"] += "\n\n" + content
                else:
                    turns.append({"role": role, "content": content})
        else:
            turns.append({"role": "user", "content": str(prompt_input.get("prompt") or "")})
        if not turns or turns[0]["role"] != "user":
            turns.insert(0, {"role": "user", "content": "(continue)"})
        body: dict[str, Any] = {
            "model": self.spec.model,
            "messages": turns,
            "max_tokens": prompt_input.get("max_tokens") or self._default_max_tokens,
            "stream": stream,
        }
        if system:
            body["system"] = "\n\n".join(system)
        if prompt_input.get("stop"):
            body["stop_sequences"] = list(prompt_input["stop"])
        if sampling.get("temperature") is not None:
            body["temperature"] = float(sampling["temperature"])  # at most 1: `refusal`
        if sampling.get("top_p") is not None and sampling["top_p"] < 1:
            body["top_p"] = sampling["top_p"]
        if sampling.get("top_k"):
            body["top_k"] = sampling["top_k"]
        return body

    async def _stream(
        self, body: dict[str, Any], prompt_estimate: int
    ) -> AsyncIterator[GenerationEvent]:
        async with self._http.stream(self._path, body) as (status, headers, batches):
            if status != 200:
                raise status_error(status, headers, await read_all(batches))
            prompt, completion, pieces = prompt_estimate, 0, 0
            stop_reason: str | None = None
            started = ended = False
            async for batch in batches:
                events: list[GenerationEvent] = []  # all parsed before any is passed on
                failure: UpstreamError | None = None
                for line in batch:
                    if not line.startswith(b"data:"):
                        continue
                    event = parse_json(line[5:].strip())
                    kind = event.get("type")
                    if kind == "message_start":
                        usage = (event.get("message") or {}).get("usage") or {}
                        prompt = int(usage.get("input_tokens") or prompt_estimate)
                        started = True
                        events.append(Started(prompt))
                    elif kind == "content_block_delta":
                        text = (event.get("delta") or {}).get("text")
                        if text:
                            pieces += 1
                            events.append(TextDelta(text, pieces, more=True))
                    elif kind == "message_delta":
                        stop_reason = (event.get("delta") or {}).get("stop_reason") or stop_reason
                        completion = int((event.get("usage") or {}).get("output_tokens") or pieces)
                    elif kind == "message_stop":
                        ended = True
                        break
                    elif kind == "error":
                        err = event.get("error") or {}
                        overloaded = err.get("type") in ("overloaded_error", "api_error")
                        failure = UpstreamError(
                            f"The upstream failed mid-stream ({err.get('type')}).",
                            reason="server_error" if overloaded else "stream",
                        )
                        break
                for out in in_hand(events, then_more=ended):  # then `Finished`
                    yield out
                if failure is not None:
                    raise failure
                if ended:
                    break
            if not (started and ended):
                raise UpstreamError("The upstream's stream ended early.", reason="stream")
            yield Finished(_finish(stop_reason, pieces > 0), prompt, completion)


def _finish(stop_reason: Any, any_text: bool) -> str:
    finish = _FINISH.get(str(stop_reason), "stop")
    if finish == "content_filter" and not any_text:
        raise UpstreamError("The upstream refused the request.", reason="content_filter")
    return finish

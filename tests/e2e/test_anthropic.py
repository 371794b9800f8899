"""The anthropic engine end to end: the official openai client -> inferplane -> a fake
of Anthropic's Messages API on its own socket (the one part that cannot be real here)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema
import openai
import pytest

from tests.e2e.fake_anthropic import API_KEY, FakeAnthropic
from tests.e2e.server import Server, running_server


@dataclass
class Setup:
    server: Server
    fake: FakeAnthropic


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("anthropic")
    with FakeAnthropic() as fake:
        config = tmp / "config.yaml"
        config.write_text(
            f"""
models:
  - id: claude
    default_max_tokens: 64
    deployments:
      - name: fake-claude
        engine: anthropic
        base_url: {fake.url}
        model: claude-test
        api_key_env: FAKE_ANTHROPIC_KEY
  - id: claude-tools  # its own breaker: the overload test opens fake-claude's
    default_max_tokens: 64
    deployments:
      - {{name: tools-claude, engine: anthropic, base_url: "{fake.url}", model: claude-test,
         api_key_env: FAKE_ANTHROPIC_KEY}}
  - id: guarded
    strategy: cost  # the strict one is cheaper: always asked first
    deployments:
      - {{name: strict, engine: anthropic, base_url: "{fake.url}", model: claude-strict,
         api_key_env: FAKE_ANTHROPIC_KEY, price: {{input_per_million: 1}}}}
      - {{name: lenient, engine: anthropic, base_url: "{fake.url}", model: claude-test,
         api_key_env: FAKE_ANTHROPIC_KEY, price: {{input_per_million: 5}}}}
  - id: strict-only
    deployments:
      - {{name: strict-alone, engine: anthropic, base_url: "{fake.url}", model: claude-strict,
         api_key_env: FAKE_ANTHROPIC_KEY}}
"""
        )
        fake.refusing.add("claude-strict")
        env = {"FAKE_ANTHROPIC_KEY": API_KEY}
        with running_server(tmp / "data", config=config, env=env) as server:
            yield Setup(server, fake)


MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "Hi."},
    {"role": "user", "content": "What is two plus two"},
]


def test_chat_is_translated_both_ways(setup: Setup) -> None:
    raw = setup.server.client().chat.completions.with_raw_response.create(
        model="claude",
        messages=MESSAGES,
        temperature=0.5,  # type: ignore[arg-type]
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == "You said: What is two plus two"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (
        10,
        7,
    )  # the fake counts words
    assert raw.headers["x-inferplane-deployment"] == "fake-claude"
    assert raw.headers["x-inferplane-model-version"] == "anthropic:claude-test"
    sent = setup.fake.requests[-1]
    assert sent["headers"]["x-api-key"] == API_KEY
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    body = sent["body"]
    assert body["system"] == "Be brief."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["model"] == "claude-test"
    assert body["max_tokens"] == 64  # the alias's default: the Messages API requires one
    assert body["temperature"] == 0.5


def test_streaming_chat_and_length_finish(setup: Setup) -> None:
    client = setup.server.client()
    chunks = list(
        client.chat.completions.create(
            model="claude",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: What is two plus two"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    assert setup.fake.requests[-1]["body"]["stream"] is True
    short = client.chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "one two three four"}],
        max_tokens=2,
    )
    assert short.choices[0].message.content == "You said:"
    assert short.choices[0].finish_reason == "length"


def test_text_completion_becomes_one_user_turn(setup: Setup) -> None:
    resp = setup.server.client().completions.create(model="claude", prompt="Once upon a time")
    assert resp.choices[0].text == "You said: Once upon a time"
    assert setup.fake.requests[-1]["body"]["messages"] == [
        {"role": "user", "content": "Once upon a time"}
    ]


def test_usage_is_billed_at_the_alias_price_with_the_upstream_counts(setup: Setup) -> None:
    with setup.server.http() as admin:
        price = {"input_per_million": 1000, "output_per_million": 2000}
        assert admin.put("/admin/v1/pricing/claude", json=price).status_code == 200
        key = admin.post("/admin/v1/keys", json={"name": "billed"}).json()
    setup.server.client(key["key"]).chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "price me"}]
    )
    with setup.server.http() as admin:
        rows = admin.get(
            "/admin/v1/usage", params={"group_by": "model,deployment", "key_id": key["id"]}
        ).json()["data"]
    assert len(rows) == 1
    row = rows[0]
    assert (row["model"], row["deployment"]) == ("claude", "fake-claude")
    # The fake counted 2 input and 4 output words: 2 x 1000 + 4 x 2000 per million.
    assert (row["prompt_tokens"], row["completion_tokens"]) == (2, 4)
    assert row["cost_usd"] == pytest.approx(0.01)


def test_rate_limit_retry_after_is_honoured(setup: Setup) -> None:
    setup.fake.fail_next.append((429, "rate_limit_error", "1"))
    started = time.perf_counter()
    raw = setup.server.client().chat.completions.with_raw_response.create(
        model="claude", messages=[{"role": "user", "content": "again"}]
    )
    took = time.perf_counter() - started
    assert raw.parse().choices[0].message.content == "You said: again"
    assert raw.headers["x-inferplane-attempts"] == "2"
    assert took >= 1.0  # waited out the upstream's Retry-After before the second attempt


def test_overload_without_another_deployment_is_a_clean_error(setup: Setup) -> None:
    setup.fake.fail_next.extend([(529, "overloaded_error", None)] * 4)
    with setup.server.http() as http:
        resp = http.post(
            "/v1/chat/completions",
            json={"model": "claude", "messages": [{"role": "user", "content": "x"}]},
        )
    left = len(setup.fake.fail_next)
    setup.fake.fail_next.clear()
    assert resp.status_code == 502
    error = resp.json()["error"]
    assert error["code"] == "upstream_error" and "injected" not in error["message"]
    # Retried (with backoff) until the breaker opened: 3 failures in a row by default
    # (the earlier requests' successes reset its count).
    assert resp.headers["x-inferplane-attempts"] == "3" and left == 1
    with setup.server.http() as http:
        rows = http.get("/admin/v1/deployments").json()["data"]
    (row,) = [r for r in rows if r["name"] == "fake-claude"]
    assert row["breaker"] == "open" and row["healthy"] is False


def test_a_refusal_fails_over_to_another_deployment(setup: Setup) -> None:
    client = setup.server.client()
    question = [{"role": "user", "content": "tell me"}]
    raw = client.chat.completions.with_raw_response.create(model="guarded", messages=question)  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content == "You said: tell me"
    assert raw.headers["x-inferplane-deployment"] == "lenient"
    assert raw.headers["x-inferplane-attempts"] == "2"
    assert [r["body"]["model"] for r in setup.fake.requests[-2:]] == [
        "claude-strict",
        "claude-test",
    ]
    chunks = client.chat.completions.create(model="guarded", messages=question, stream=True)  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "You said: tell me"
    )
    assert setup.fake.requests[-2]["body"]["model"] == "claude-strict"
    # With nothing else to ask, the caller gets the refusal as OpenAI states it: a 400
    # with code content_filter; a refusal says nothing of the deployment's health.
    with setup.server.http() as http:
        resp = http.post(
            "/v1/chat/completions", json={"model": "strict-only", "messages": question}
        )
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "content_filter"
        assert resp.headers["x-inferplane-attempts"] == "1"
        rows = http.get("/admin/v1/deployments").json()["data"]
    (row,) = [r for r in rows if r["name"] == "strict-alone"]
    assert row["breaker"] == "closed" and row["failures"] == 0


def test_the_provider_key_never_leaks(setup: Setup) -> None:
    with setup.server.http() as http:
        deployments = http.get("/admin/v1/deployments").text
    assert API_KEY not in deployments
    assert API_KEY not in setup.server.text()
    assert "fake-claude" in deployments


RUNTIME = {
    "alias": "claude-rt",
    "name": "rt-claude",
    "engine": "anthropic",
    "model": "claude-rt-model",
    "api_key": API_KEY,
    "tags": ["external"],
}


def test_deployments_are_managed_at_run_time(setup: Setup) -> None:
    client = setup.server.client()
    with setup.server.http() as admin:
        created = admin.post("/admin/v1/deployments", json={**RUNTIME, "base_url": setup.fake.url})
        assert created.status_code == 201, created.text
        view = created.json()
        assert (view["model"], view["name"], view["source"]) == (
            "claude-rt",
            "rt-claude",
            "runtime",
        )
        assert API_KEY not in created.text
        # Names are unique; config deployments are the file's; bad bodies are 400s.
        again = admin.post("/admin/v1/deployments", json={**RUNTIME, "base_url": setup.fake.url})
        assert again.status_code == 409
        assert admin.delete("/admin/v1/deployments/fake-claude").status_code == 409
        assert admin.delete("/admin/v1/deployments/nope").status_code == 404
        bad = admin.post("/admin/v1/deployments", json={**RUNTIME, "name": "x", "base_url": 1})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "base_url"
    resp = client.chat.completions.with_raw_response.create(
        model="claude-rt", messages=[{"role": "user", "content": "hi"}]
    )
    assert resp.headers["x-inferplane-deployment"] == "rt-claude"
    sent = setup.fake.requests[-1]
    assert sent["body"]["model"] == "claude-rt-model"
    assert sent["headers"]["x-api-key"] == API_KEY  # decrypted for the upstream only
    # At rest the key is encrypted: the store's file never holds it in clear.
    store = b"".join(p.read_bytes() for p in setup.server.data_dir.glob("inferplane.db*"))
    assert b"rt-claude" in store and API_KEY.encode() not in store
    with setup.server.http() as admin:
        patched = admin.patch("/admin/v1/deployments/rt-claude", json={"model": "claude-rt-2"})
        assert patched.status_code == 200, patched.text
    client.chat.completions.create(model="claude-rt", messages=[{"role": "user", "content": "x"}])
    assert setup.fake.requests[-1]["body"]["model"] == "claude-rt-2"
    assert setup.fake.requests[-1]["headers"]["x-api-key"] == API_KEY  # kept by the patch


def test_removing_a_deployment_lets_its_running_stream_finish(setup: Setup) -> None:
    setup.fake.delay_s = 0.1
    pieces: list[str] = []
    started = threading.Event()

    def stream() -> None:
        for chunk in setup.server.client().chat.completions.create(
            model="claude-rt",
            messages=[{"role": "user", "content": "one two three four five six seven"}],
            stream=True,
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                started.set()

    runner = threading.Thread(target=stream)
    runner.start()
    try:
        assert started.wait(10)
        with setup.server.http() as admin:
            assert admin.delete("/admin/v1/deployments/rt-claude").status_code == 204
            names = [d["name"] for d in admin.get("/admin/v1/deployments").json()["data"]]
        assert "rt-claude" not in names
    finally:
        runner.join(30)
        setup.fake.delay_s = 0.0
    assert "".join(pieces) == "You said: one two three four five six seven"
    with setup.server.http() as http:
        gone = http.post(
            "/v1/chat/completions",
            json={"model": "claude-rt", "messages": [{"role": "user", "content": "x"}]},
        )
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("seed", 7),
        ("presence_penalty", 0.5),
        ("frequency_penalty", -0.5),
        ("temperature", 1.5),
        ("logit_bias", {"5": 1}),
        ("logprobs", True),
        ("n", 2),
    ],
)
def test_what_anthropic_cannot_honour_is_refused_by_name(
    setup: Setup, param: str, value: object
) -> None:
    """Its Messages API has no seed, no penalties and no log probabilities, and its
    temperature ends at 1: 400 naming the parameter, nothing sent upstream (never sent
    with it dropped)."""
    sent = len(setup.fake.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        setup.server.client().chat.completions.create(
            model="claude",
            messages=MESSAGES,  # type: ignore[arg-type]
            **{param: value},
        )
    assert caught.value.param == param
    assert caught.value.code == "unsupported_parameter"
    assert len(setup.fake.requests) == sent


TOOLS_MODEL = "claude-tools"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather now.", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "add", "parameters": ADD}},
]
# The fake's calls: each tool's required properties, from the schema it was sent.
WEATHER_INPUT = {"city": "text", "unit": "celsius"}
ADD_INPUT = {"a": 1, "b": 1}


def _calls(message: Any) -> list[tuple[str, str, Any]]:
    return [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]


def test_required_tool_choice_calls_tools_in_parallel_unless_told_not_to(setup: Setup) -> None:
    client = setup.server.client()
    ask: Any = [{"role": "user", "content": "Weather in Paris?"}]
    resp = client.chat.completions.create(
        model=TOOLS_MODEL, messages=ask, tools=TOOLS, tool_choice="required"
    )
    body = setup.fake.requests[-1]["body"]
    assert body["tools"] == [
        {"name": "get_weather", "input_schema": WEATHER, "description": "Weather now."},
        {"name": "add", "input_schema": ADD},
    ]
    assert body["tool_choice"] == {"type": "any"}
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    ids = [call[0] for call in _calls(choice.message)]
    assert all(i.startswith("toolu_") for i in ids) and len(set(ids)) == 2
    assert [c[1:] for c in _calls(choice.message)] == [
        ("get_weather", WEATHER_INPUT),
        ("add", ADD_INPUT),
    ]
    single = client.chat.completions.create(
        model=TOOLS_MODEL,
        messages=ask,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
    )
    sent = setup.fake.requests[-1]["body"]["tool_choice"]
    assert sent == {"type": "any", "disable_parallel_tool_use": True}
    assert [c[1] for c in _calls(single.choices[0].message)] == ["get_weather"]


def test_tool_calls_stream_as_openai_streams_them(setup: Setup) -> None:
    """The fake writes a text block first (auto mode): the calls are still 0 and 1."""
    ask: Any = [{"role": "user", "content": "use get_weather and add please"}]
    chunks = list(
        setup.server.client().chat.completions.create(
            model=TOOLS_MODEL, messages=ask, tools=TOOLS, stream=True
        )
    )
    assert setup.fake.requests[-1]["body"]["tool_choice"] == {"type": "auto"}
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "Calling the tools."
    pieces = [call for d in deltas for call in d.tool_calls or []]
    assert sorted({p.index for p in pieces}) == [0, 1]
    for index, (name, expected) in enumerate([("get_weather", WEATHER_INPUT), ("add", ADD_INPUT)]):
        mine = [p for p in pieces if p.index == index]
        assert mine[0].id and mine[0].function and mine[0].function.name == name
        assert all(p.id is None and p.function and p.function.name is None for p in mine[1:])
        assert len(mine) > 2  # the arguments came in pieces, as they were streamed
        assert json.loads("".join(p.function.arguments or "" for p in mine if p.function)) == (
            expected
        )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    named = setup.server.client().chat.completions.create(
        model=TOOLS_MODEL,
        messages=ask,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "add"}},
        stream=True,
    )
    calls = [call for c in named if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert setup.fake.requests[-1]["body"]["tool_choice"] == {"type": "tool", "name": "add"}
    assert {c.function.name for c in calls if c.function and c.function.name} == {"add"}


def test_a_streamed_call_without_arguments_has_an_empty_object(setup: Setup) -> None:
    """Claude streams only an empty `partial_json` for a call without arguments: the
    caller still gets `{}`, as in a whole answer."""
    now = {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}
    ask: Any = [{"role": "user", "content": "What time is it?"}]
    chunks = setup.server.client().chat.completions.create(
        model=TOOLS_MODEL, messages=ask, tools=[now], tool_choice="required", stream=True
    )
    pieces = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert json.loads("".join(p.function.arguments or "" for p in pieces if p.function)) == {}


def test_tool_results_continue_the_conversation(setup: Setup) -> None:
    calls = [
        {
            "id": "call_w",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
        },
    ]
    messages: list[Any] = [
        {"role": "user", "content": "Weather in Paris, and 2 plus 3?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_w", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_a", "content": "5"},
    ]
    client = setup.server.client()
    resp = client.chat.completions.create(model=TOOLS_MODEL, messages=messages, tools=TOOLS)
    assert resp.choices[0].message.content == "You said: sunny 5"
    assert resp.choices[0].finish_reason == "stop"
    assert setup.fake.requests[-1]["body"]["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_w",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "call_a", "name": "add", "input": {"a": 2, "b": 3}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_w", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "call_a", "content": "5"},
            ],
        },
    ]
    # Arguments that are not a JSON object have no `input` to become: 400 naming them.
    calls[1]["function"]["arguments"] = "[2, 3]"
    sent = len(setup.fake.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=TOOLS_MODEL, messages=messages, tools=TOOLS)
    assert caught.value.param == "messages" and len(setup.fake.requests) == sent


REPORT = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "degrees": {"type": "integer"},
        "sky": {"enum": ["clear", "cloudy"]},
        "note": {"type": "string"},
    },
    "required": ["city", "degrees", "sky"],
    "additionalProperties": False,
}


def test_json_mode_is_a_forced_tool_whose_input_is_the_answer(setup: Setup) -> None:
    client = setup.server.client()
    ask: Any = [{"role": "user", "content": "Report the weather in Paris."}]
    resp = client.chat.completions.create(
        model=TOOLS_MODEL,
        messages=ask,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "weather report", "schema": REPORT},
        },
    )
    body = setup.fake.requests[-1]["body"]
    assert body["tools"] == [{"name": "weather_report", "input_schema": REPORT}]
    assert body["tool_choice"] == {"type": "tool", "name": "weather_report"}
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].message.tool_calls is None
    jsonschema.validate(json.loads(resp.choices[0].message.content or ""), REPORT)
    chunks = client.chat.completions.create(
        model=TOOLS_MODEL, messages=ask, response_format={"type": "json_object"}, stream=True
    )
    pieces = [c.choices[0] for c in chunks if c.choices]
    assert json.loads("".join(p.delta.content or "" for p in pieces)) == {}
    assert pieces[-1].finish_reason == "stop"
    assert setup.fake.requests[-1]["body"]["tools"][0]["input_schema"] == {"type": "object"}


def test_json_mode_beside_tools_is_refused_by_name(setup: Setup) -> None:
    """Both would need the one `tool_choice`: 400, nothing sent upstream."""
    sent = len(setup.fake.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        setup.server.client().chat.completions.create(
            model=TOOLS_MODEL,
            messages=MESSAGES,  # type: ignore[arg-type]
            tools=TOOLS,
            response_format={"type": "json_object"},
        )
    assert caught.value.param == "response_format"
    assert caught.value.code == "unsupported_parameter"
    assert len(setup.fake.requests) == sent

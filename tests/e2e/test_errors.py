"""Every error case gets OpenAI's error envelope and the right status; never a 500."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.server import Server

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


def _error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in resp.text
    assert resp.headers["x-request-id"]
    return dict(body["error"])


def test_malformed_json_is_400(server: Server) -> None:
    with server.http() as http:
        err = _error(http.post(CHAT, content=b'{"model": "gemma-3-270m", '), 400)
    assert err["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HI}, "model"),
        ({"model": "gemma-3-270m"}, "messages"),
        ({"model": "gemma-3-270m", "messages": []}, "messages"),
        ({"model": "gemma-3-270m", "messages": [{"role": "wizard", "content": "x"}]}, None),
        ({"model": "gemma-3-270m", "messages": HI, "temperature": 3}, "temperature"),
        ({"model": "gemma-3-270m", "messages": HI, "max_tokens": 0}, "max_tokens"),
        ({"model": "gemma-3-270m", "messages": HI, "top_p": "x"}, "top_p"),
        ({"model": "gemma-3-270m", "messages": HI, "n": 129}, "n"),  # OpenAI's bound
        ({"model": "gemma-3-270m", "messages": HI, "stop": ["a"] * 5}, "stop"),
        ({"model": "gemma-3-270m", "messages": HI, "stream_options": {}}, "stream_options"),
    ],
)
def test_schema_violations_are_400_naming_the_param(
    server: Server, body: dict[str, Any], param: str | None
) -> None:
    with server.http() as http:
        err = _error(http.post(CHAT, json=body), 400)
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param
    else:
        assert err["param"] and err["param"].startswith("messages[0]")


def test_unknown_model_is_404(server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        server.client().chat.completions.create(model="no-such-model", messages=HI)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"
    with server.http() as http:
        _error(http.get("/v1/models/no-such-model"), 404)
        err = _error(http.post("/v1/embeddings", json={"model": "nope", "input": "x"}), 404)
    assert err["code"] == "model_not_found"


def test_wrong_kind_of_model_is_400(server: Server) -> None:
    with server.http() as http:
        err = _error(http.post("/v1/embeddings", json={"model": "gemma-3-270m", "input": "x"}), 400)
    assert err["param"] == "model"


def test_prompt_longer_than_context_is_400(server: Server) -> None:
    long_text = "hello " * 3000
    with pytest.raises(openai.BadRequestError) as info:
        server.client().chat.completions.create(
            model="gemma-3-270m", messages=[{"role": "user", "content": long_text}]
        )
    assert info.value.code == "context_length_exceeded"
    with server.http() as http:
        err = _error(
            http.post("/v1/completions", json={"model": "gemma-3-270m", "prompt": long_text}), 400
        )
        assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"
        err = _error(
            http.post(
                "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ["ok", long_text]}
            ),
            400,
        )
    assert err["code"] == "context_length_exceeded" and err["param"] == "input"


def test_streaming_request_errors_before_the_stream_are_plain_http(server: Server) -> None:
    body = {
        "model": "gemma-3-270m",
        "messages": [{"role": "user", "content": "x " * 3000}],
        "stream": True,
    }
    with server.http() as http:
        err = _error(http.post(CHAT, json=body), 400)
    assert err["code"] == "context_length_exceeded"


def test_body_over_the_limit_is_413(server: Server) -> None:
    big = json.dumps({"model": "gemma-3-270m", "prompt": "a" * (5 * 1024 * 1024)}).encode()
    with server.http() as http:
        err = _error(http.post("/v1/completions", content=big), 413)

        def chunks():  # type: ignore[no-untyped-def]
            for i in range(0, len(big), 65536):
                yield big[i : i + 65536]

        chunked = http.post("/v1/completions", content=chunks())
    assert err["code"] == "payload_too_large"
    _error(chunked, 413)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}, {"Authorization": ""}],
)
def test_missing_or_invalid_key_is_401(server: Server, headers: dict[str, str]) -> None:
    resp = httpx.post(
        server.base_url + CHAT, json={"model": "gemma-3-270m", "messages": HI}, headers=headers
    )
    err = _error(resp, 401)
    assert err["type"] == "authentication_error"


def test_auth_comes_before_body_parsing(server: Server) -> None:
    resp = httpx.post(server.base_url + CHAT, content=b"{not json")
    _error(resp, 401)


GARBAGE: list[Any] = [
    None,
    [],
    1,
    "x",
    {"model": None},
    {"model": 5, "messages": "hi"},
    {"model": "gemma-3-270m", "messages": [None]},
    {"model": "gemma-3-270m", "messages": [{}]},
    {"model": "gemma-3-270m", "messages": HI, "stop": [1]},
    {"model": "gemma-3-270m", "messages": HI, "seed": "s"},
    {"model": "gemma-3-270m", "messages": [{"role": "user", "content": [{"type": "image"}]}]},
    {"model": "gemma-3-270m", "prompt": [1, 2, 3]},
    {"model": "gemma-3-270m", "prompt": []},
    {"model": "all-minilm-l6-v2", "input": []},
    {"model": "all-minilm-l6-v2", "input": [[-1]]},
    {"model": "all-minilm-l6-v2", "input": "x", "encoding_format": "int8"},
    {"model": "all-minilm-l6-v2", "input": "x", "dimensions": 3},
]


@pytest.mark.parametrize("path", [CHAT, "/v1/completions", "/v1/embeddings", "/admin/v1/keys"])
def test_bad_input_never_yields_a_500(server: Server, path: str) -> None:
    with server.http() as http:
        for body in GARBAGE:
            resp = http.post(path, content=json.dumps(body).encode())
            assert 400 <= resp.status_code < 500, (body, resp.text)
            assert "Traceback" not in resp.text
            assert resp.json()["error"]["message"]


def test_unknown_route_and_method(server: Server) -> None:
    with server.http() as http:
        _error(http.get("/v1/nothing-here"), 404)
        _error(http.get(CHAT), 405)


def test_request_id_and_model_headers(server: Server) -> None:
    with server.http() as http:
        listing = http.get("/v1/models", headers={"x-request-id": "my-trace-123"})
        chat = http.post(
            CHAT, json={"model": "gemma-3-270m", "messages": HI, "max_tokens": 2, "stream": True}
        )
        bad = http.post(CHAT, json={"model": "gemma-3-270m"}, headers={"x-request-id": "a b"})
    assert listing.headers["x-request-id"] == "my-trace-123"
    assert listing.headers["x-inferplane-model-version"] == "none"
    assert chat.headers["x-inferplane-model-version"].startswith("sha256:")
    assert chat.headers["x-inferplane-deployment"] == "local/gemma-3-270m"
    assert chat.text.endswith("data: [DONE]\n\n")
    # An unsafe client id is replaced, not echoed.
    assert bad.headers["x-request-id"].startswith("req_")

"""The context checks made before a local model's prompt is tokenized, through the API."""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.server import Server

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


def _error(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 400, resp.text
    assert "Traceback" not in resp.text
    return dict(resp.json()["error"])


def test_max_tokens_past_the_context_is_400_not_clipped(server: Server) -> None:
    body = {"model": "gemma-3-270m", "messages": HI, "max_tokens": 2048}  # its whole context
    with server.http() as http:
        err = _error(http.post(CHAT, json=body))
    assert (err["type"], err["param"], err["code"]) == (
        "invalid_request_error",
        "max_tokens",
        "invalid_value",
    )
    assert "2048" in err["message"]


def test_a_megabyte_prompt_is_refused_by_its_bytes(server: Server) -> None:
    prompt = "hello " * 175_000  # 1.05 MB: 175,001 tokens, refused without counting them
    with server.http() as http:
        err = _error(http.post("/v1/completions", json={"model": "gemma-3-270m", "prompt": prompt}))
        assert (err["param"], err["code"]) == ("prompt", "context_length_exceeded")
        assert "at least 21875 prompt tokens (1050000 bytes)" in err["message"]
        chat = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": prompt}]}
        err = _error(http.post(CHAT, json=chat))
    assert (err["param"], err["code"]) == ("messages", "context_length_exceeded")

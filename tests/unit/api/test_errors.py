from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import BaseModel, Field, ValidationError

from inferplane.api.errors import validation_error
from inferplane.errors import ContextLengthExceeded, Overloaded


class Inner(BaseModel):
    role: str


class Body(BaseModel):
    model: str
    messages: list[Inner]
    temperature: Annotated[float, Field(le=2)] = 1
    stop: str | list[str] | None = None


def _error(raw: str) -> dict[str, object]:
    with pytest.raises(ValidationError) as info:
        Body.model_validate_json(raw)
    return validation_error(info.value).body()["error"]  # type: ignore[no-any-return]


def test_param_names_follow_openai_style() -> None:
    assert _error('{"messages": []}')["param"] == "model"
    assert _error('{"model": "m", "messages": [{}]}')["param"] == "messages[0].role"
    assert _error('{"model": "m", "messages": [], "temperature": 9}')["param"] == "temperature"
    assert _error('{"model": "m", "messages": [], "stop": [1]}')["param"] == "stop"


def test_malformed_json() -> None:
    err = _error("{nope")
    assert err["code"] == "invalid_json" and err["param"] is None


def test_typed_errors_carry_their_data() -> None:
    exc = Overloaded(model="m", queued=3, max_queued=3, retry_after=2)
    assert exc.status == 429 and exc.headers == {"Retry-After": "2"}
    ctx = ContextLengthExceeded(prompt_tokens=10, context_size=8)
    assert ctx.body()["error"]["code"] == "context_length_exceeded"
    assert "8" in ctx.message and ctx.param == "messages"

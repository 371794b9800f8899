from __future__ import annotations

import pytest

from inferplane.config.defaults import DEFAULT_CHAT_STOP, DEFAULT_CHAT_TEMPLATE
from inferplane.engines.local.chat_template import ChatTemplate
from inferplane.errors import InvalidRequest


def test_default_template_renders_a_transcript() -> None:
    prompt = ChatTemplate(DEFAULT_CHAT_TEMPLATE).render(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Capital of France?"},
        ]
    )
    expected = "Be brief.\n\nUser: Hi\nAssistant: Hello.\nUser: Capital of France?\nAssistant:"
    assert prompt == expected
    # The turn marker the model would write next is one of the stops.
    assert any(stop in prompt + "\nUser:" for stop in DEFAULT_CHAT_STOP)


def test_template_errors_become_invalid_request() -> None:
    template = ChatTemplate("{{ raise_me() }}")
    with pytest.raises(InvalidRequest) as info:
        template.render([{"role": "user", "content": "x"}])
    assert info.value.param == "messages"


def test_template_is_sandboxed() -> None:
    template = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(InvalidRequest):
        template.render([])

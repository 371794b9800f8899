"""Policy documents, and what a policy's rules do to a text."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferplane.errors import InvalidRequest
from inferplane.guardrails.guard import Pseudonyms, apply
from inferplane.guardrails.policy import parse_policy
from inferplane.guardrails.restore import Restorer
from inferplane.guardrails.window import Blocked, OutputWindow


def _policy(*rules: dict[str, Any]) -> Any:
    return parse_policy({"id": "p", "input": list(rules)})


def _doc(*rules: dict[str, Any], direction: str = "input", **policy: Any) -> dict[str, Any]:
    return {"id": "p", direction: list(rules), **policy}


def _rule(**options: Any) -> dict[str, Any]:
    return {"id": "a", "detector": "pii", "action": "flag", **options}


@pytest.mark.parametrize(
    ("document", "path"),
    [
        (_doc(_rule(action="shred")), "input[0].action"),
        (_doc(_rule(detector="magic")), "input[0].detector"),
        (_doc(_rule(detector="regex")), "input[0]"),  # no patterns
        (_doc(_rule(detector="regex", patterns=["("])), "input[0].patterns"),
        (_doc(_rule(entities=["AURA"])), "input[0].entities"),
        (_doc(_rule(detector="secrets", words=["x"])), "input[0]"),
        (_doc(_rule(action="pseudonymise"), direction="output"), "output[0].action"),
        (_doc(_rule(), _rule()), "input[1].id"),
        (_doc(_rule(extra=1)), "input[0].extra"),
        (_doc(id="bad id!"), "id"),
        (_doc(_rule(action="block", external_only=True)), "input[0]"),
        (_doc(_rule(detector="json_schema", schema={"type": "object"})), "input[0].detector"),
        (_doc(_rule(action="escalate")), "input[0]"),  # no hold
        (_doc(_rule(hold="wait")), "input[0]"),  # a hold without escalate
        (_doc(_rule(action="escalate", hold="wait"), direction="output"), "output[0].action"),
        (_doc(_rule(action="escalate", hold="wait", timeout_s=0)), "input[0].timeout_s"),
        (
            _doc(_rule(detector="json_schema", schema={"type": 3}), direction="output"),
            "output[0].schema",
        ),
        (_doc(_rule(detector="json_schema"), direction="output"), "output[0]"),
        (
            _doc(_rule(detector="json_schema", schema={}, action="redact"), direction="output"),
            "output[0]",
        ),
    ],
)
def test_a_bad_document_is_refused_naming_the_field(document: Any, path: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_policy(document)
    assert caught.value.param == path, caught.value.message


def test_block_wins_and_leaves_the_text_as_it_was() -> None:
    policy = _policy(
        {"id": "pii", "detector": "pii", "action": "redact"},
        {"id": "words", "detector": "deny_list", "words": ["Project X"], "action": "block"},
    )
    text = "Send jane@example.org the project x plans"
    verdict = apply(policy.input, text, Pseudonyms())
    assert verdict.action == "block" and verdict.blocked_by is not None
    assert verdict.blocked_by.id == "words" and verdict.text == text


def test_redact_pseudonymise_and_flag_together() -> None:
    policy = _policy(
        {"id": "cards", "detector": "pii", "entities": ["CREDIT_CARD"], "action": "redact"},
        {"id": "mail", "detector": "pii", "entities": ["EMAIL_ADDRESS"], "action": "pseudonymise"},
        {"id": "ticket", "detector": "regex", "patterns": [r"TCK-\d+"], "action": "flag"},
    )
    pseudonyms = Pseudonyms()
    text = "a@x.io paid 4111 1111 1111 1111 for TCK-42; cc a@x.io and b@y.io"
    verdict = apply(policy.input, text, pseudonyms)
    assert verdict.action in ("redact", "pseudonymise")
    assert verdict.text == (
        "<EMAIL_ADDRESS_1> paid <CREDIT_CARD> for TCK-42; "
        "cc <EMAIL_ADDRESS_1> and <EMAIL_ADDRESS_2>"
    )
    assert {h.rule.id for h in verdict.hits} == {"cards", "mail", "ticket"}
    assert pseudonyms.values == {"<EMAIL_ADDRESS_1>": "a@x.io", "<EMAIL_ADDRESS_2>": "b@y.io"}


def test_nothing_found_passes_the_text_unchanged() -> None:
    verdict = apply(
        _policy({"id": "s", "detector": "secrets", "action": "block"}).input, "hi", Pseudonyms()
    )
    assert (verdict.action, verdict.text, verdict.hits) == ("pass", "hi", [])


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_placeholders_are_restored_however_the_answer_is_cut(size: int) -> None:
    values = {"<EMAIL_ADDRESS_1>": "a@x.io", "<PHONE_NUMBER_1>": "+1 415 555 2671"}
    answer = "Hi <EMAIL_ADDRESS_1>, I'll call <PHONE_NUMBER_1>. <b>bold</b> <EMAIL_ADDRESS_9> <"
    restorer = Restorer(values)
    out = "".join(restorer.feed(answer[i : i + size]) for i in range(0, len(answer), size))
    out += restorer.flush()
    assert out == "Hi a@x.io, I'll call +1 415 555 2671. <b>bold</b> <EMAIL_ADDRESS_9> <"


def _window(*rules: dict[str, Any]) -> tuple[OutputWindow, list[str]]:
    found: list[str] = []
    window = OutputWindow(
        _policy(*rules).input, lambda hits, _: found.extend(h.finding.type for h in hits)
    )
    return window, found


@pytest.mark.parametrize("size", [1, 4, 9, 50, 500])
def test_output_rules_mask_values_however_the_answer_is_cut(size: int) -> None:
    window, found = _window({"id": "leak", "detector": "pii", "action": "redact"})
    answer = ("Sure. " * 20) + "Write to jane@example.org or +44 20 7946 0958." + (" Bye." * 20)
    out = "".join(window.feed(answer[i : i + size]) for i in range(0, len(answer), size))
    out += window.flush()
    assert out == answer.replace("jane@example.org", "<EMAIL_ADDRESS>").replace(
        "+44 20 7946 0958", "<PHONE_NUMBER>"
    )
    assert sorted(found) == ["EMAIL_ADDRESS", "PHONE_NUMBER"]  # each reported once


def test_an_output_block_stops_the_answer_before_the_value_is_released() -> None:
    window, _ = _window(
        {"id": "stop", "detector": "deny_list", "words": ["bluebird"], "action": "block"}
    )
    released = window.feed("x" * 200)
    with pytest.raises(Blocked) as caught:
        released += window.feed(" the code name is bluebird")
        released += window.flush()
    assert caught.value.rule.id == "stop" and "bluebird" not in released


def test_a_json_schema_rule_holds_the_answer_and_judges_it_whole() -> None:
    schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    rule = {"id": "shape", "detector": "json_schema", "schema": schema, "action": "block"}
    policy = parse_policy({"id": "p", "output": [rule]})
    found: list[str] = []
    for answer, passes in (('{"n": 4}' + " " * 200, True), ('{"n": "four"}', False), ("4", False)):
        window = OutputWindow(policy.output, lambda hits, _: found.extend(h.rule.id for h in hits))
        assert window.feed(answer) == ""  # nothing leaves before the end
        if passes:
            assert window.flush() == answer
        else:
            with pytest.raises(Blocked):
                window.flush()
    assert found == ["shape", "shape"]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=400))
def test_any_text_gets_a_verdict_with_findings_inside_it(text: str) -> None:
    policy = _policy(
        {"id": "p", "detector": "pii", "action": "pseudonymise"},
        {"id": "s", "detector": "secrets", "action": "redact"},
        {"id": "w", "detector": "deny_list", "words": ["a.b", "x"], "action": "flag"},
    )
    pseudonyms = Pseudonyms()
    verdict = apply(policy.input, text, pseudonyms)
    for hit in verdict.hits:
        assert 0 <= hit.finding.start < hit.finding.end <= len(text)
    restorer = Restorer(pseudonyms.values)
    if not any(h.rule.id == "s" for h in verdict.hits):  # redaction is one-way
        assert restorer.feed(verdict.text) + restorer.flush() == text

"""Applying a policy's rules to a text: every rule's detector runs on the text as given
(so every finding's offsets are the text's own), then the strongest action decides:
a `block` finding refuses the text; otherwise the spans of `redact` rules become
`<TYPE>` and those of `pseudonymise` rules a placeholder `<TYPE_n>` that stands for the
same value everywhere in the request (and is turned back into it in the answer);
`flag` findings are recorded and change nothing. Where spans overlap, the earlier rule's
wins.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import jsonschema

from inferplane.guardrails import injection
from inferplane.guardrails.pii import STRUCTURED, Finding, find_pii
from inferplane.guardrails.policy import Rule
from inferplane.guardrails.secrets import find_secrets

_STRENGTH = {"flag": 1, "redact": 2, "pseudonymise": 2, "escalate": 3, "block": 4}


@dataclass(frozen=True, slots=True)
class Hit:
    """A finding, by the rule that looked for it."""

    rule: Rule
    finding: Finding


@dataclass(slots=True)
class Verdict:
    """What a policy's rules made of a text: the strongest action taken ("pass" when no
    rule found anything), what each rule found, and the text to pass on."""

    action: str
    hits: list[Hit]
    text: str
    timings: dict[str, float] = field(default_factory=dict)  # detector -> seconds

    @property
    def blocked_by(self) -> Rule | None:
        return next((h.rule for h in self.hits if h.rule.action == "block"), None)


class Pseudonyms:
    """One request's placeholders: each distinct value of a type gets `<TYPE_n>`, the
    same each time it comes back."""

    def __init__(self) -> None:
        self._by_value: dict[tuple[str, str], str] = {}
        self.values: dict[str, str] = {}  # placeholder -> value

    def __bool__(self) -> bool:
        return bool(self.values)

    def placeholder(self, kind: str, value: str) -> str:
        key = (kind, value)
        if key not in self._by_value:
            n = sum(1 for k, _ in self._by_value if k == kind) + 1
            self._by_value[key] = name = f"<{kind}_{n}>"
            self.values[name] = value
        return self._by_value[key]


def apply(rules: Iterable[Rule], text: str, pseudonyms: Pseudonyms) -> Verdict:
    hits, timings = scan(rules, text)
    if not hits:
        return Verdict("pass", hits, text, timings)
    action = max((h.rule.action for h in hits), key=_STRENGTH.__getitem__)
    if action == "block":
        return Verdict(action, hits, text, timings)
    return Verdict(action, hits, rewritten(text, hits, pseudonyms), timings)


def scan(rules: Iterable[Rule], text: str) -> tuple[list[Hit], dict[str, float]]:
    """What each rule finds in the text, and the seconds each detector took."""
    hits: list[Hit] = []
    timings: dict[str, float] = {}
    for rule in rules:
        started = time.perf_counter()
        hits += [Hit(rule, f) for f in detect(rule, text)]
        timings[rule.detector] = timings.get(rule.detector, 0.0) + time.perf_counter() - started
    return hits, timings


def detect(rule: Rule, text: str) -> list[Finding]:
    return _DETECTORS[rule.detector](rule, text)


def _pii(rule: Rule, text: str) -> list[Finding]:
    return find_pii(text, frozenset(rule.entities or STRUCTURED))


def _secrets(rule: Rule, text: str) -> list[Finding]:
    return find_secrets(text, 3.5 if rule.threshold is None else rule.threshold)


def _regex(rule: Rule, text: str) -> list[Finding]:
    return [
        Finding("PATTERN", m.start(), m.end())
        for pattern in rule.patterns or ()
        for m in _compiled(pattern).finditer(text)
        if m.end() > m.start()
    ]


def _deny_list(rule: Rule, text: str) -> list[Finding]:
    words = "|".join(re.escape(w) for w in rule.words or ())
    pattern = _compiled(rf"(?i)(?<!\w)(?:{words})(?!\w)")
    return [Finding("DENIED_WORD", m.start(), m.end()) for m in pattern.finditer(text)]


def _json_schema(rule: Rule, text: str) -> list[Finding]:
    """The whole text as one finding when it is not JSON valid against the schema."""
    try:
        jsonschema.validate(json.loads(text), rule.json_schema or {})
    except (ValueError, jsonschema.ValidationError):
        return [Finding("SCHEMA_MISMATCH", 0, len(text))]
    return []


def _prompt_injection(rule: Rule, text: str) -> list[Finding]:
    """The whole text as one finding when the classifier scores it an attack."""
    threshold = injection.DEFAULT_THRESHOLD if rule.threshold is None else rule.threshold
    score = injection.model().score(text)
    return (
        [Finding("PROMPT_INJECTION", 0, len(text), round(score, 3))] if score >= threshold else []
    )


_DETECTORS: dict[str, Callable[[Rule, str], list[Finding]]] = {
    "pii": _pii,
    "secrets": _secrets,
    "regex": _regex,
    "deny_list": _deny_list,
    "json_schema": _json_schema,
    "prompt_injection": _prompt_injection,
}

_PATTERNS: dict[str, re.Pattern[str]] = {}


def _compiled(pattern: str) -> re.Pattern[str]:
    compiled = _PATTERNS.get(pattern)
    if compiled is None:
        if len(_PATTERNS) > 1024:
            _PATTERNS.clear()
        compiled = _PATTERNS[pattern] = re.compile(pattern)
    return compiled


def rewritten(text: str, hits: list[Hit], pseudonyms: Pseudonyms) -> str:
    """The text with the spans of redacting and pseudonymising rules replaced."""
    spans: list[Hit] = []
    for hit in hits:  # in rule order: an earlier rule's span wins an overlap
        if hit.rule.action not in ("redact", "pseudonymise"):
            continue
        f = hit.finding
        if all(f.end <= s.finding.start or f.start >= s.finding.end for s in spans):
            spans.append(hit)
    out, at = [], 0
    for hit in sorted(spans, key=lambda h: h.finding.start):
        f = hit.finding
        out.append(text[at : f.start])
        value = text[f.start : f.end]
        if hit.rule.action == "redact":
            out.append(f"<{f.type}>")
        else:
            out.append(pseudonyms.placeholder(f.type, value))
        at = f.end
    out.append(text[at:])
    return "".join(out)

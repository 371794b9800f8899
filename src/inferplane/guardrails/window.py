"""Output rules over an answer that comes in pieces: the last `hold` characters are kept
back, so that a value the rules look for is seen whole before any of it reaches the
caller; the text before them is checked and released once `step` more characters have
come (a value found across the line between the two is kept back whole); a json_schema
rule, which judges the whole answer, holds all of it back until its end. A `block`
finding stops the answer at once, whether released or not; `redact` spans are masked
as they are released; every finding is reported once, when released.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from inferplane.guardrails.guard import Hit, Pseudonyms, rewritten, scan
from inferplane.guardrails.policy import Rule


class Blocked(Exception):
    def __init__(self, rule: Rule):
        super().__init__(rule.id)
        self.rule = rule


class OutputWindow:
    def __init__(
        self,
        rules: Sequence[Rule],
        report: Callable[[list[Hit], dict[str, float]], None],
        *,
        hold: int = 64,
        step: int = 16,
    ):
        self._rules = rules
        self._report = report
        self._hold, self._step = hold, step
        self._held = ""
        # A rule on the whole answer (json_schema) holds all of it back until the end.
        self._whole = any(r.detector == "json_schema" for r in rules)

    def feed(self, piece: str) -> str:
        """What can be released of the answer so far (raises `Blocked`)."""
        self._held += piece
        if self._whole or len(self._held) < self._hold + self._step:
            return ""
        return self._release(len(self._held) - self._hold)

    def flush(self) -> str:
        """The rest, at the answer's end (raises `Blocked`)."""
        return self._release(len(self._held))

    def _release(self, upto: int) -> str:
        final = upto == len(self._held)
        rules = [r for r in self._rules if final or r.detector != "json_schema"]
        hits, timings = scan(rules, self._held)
        blocking = next((h for h in hits if h.rule.action == "block"), None)
        if blocking is not None:
            self._report([blocking], timings)
            raise Blocked(blocking.rule)
        cut = [h.finding for h in hits if h.finding.start < upto < h.finding.end]
        while cut:  # never cut through a value: keep it back whole
            upto = min(f.start for f in cut)
            cut = [h.finding for h in hits if h.finding.start < upto < h.finding.end]
        released = [h for h in hits if h.finding.end <= upto]
        self._report(released, timings)
        out = rewritten(self._held[:upto], released, Pseudonyms())
        self._held = self._held[upto:]
        return out

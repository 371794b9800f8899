"""Incremental stop-string matching over streamed text.

Text is released as soon as it cannot be the start of a stop string; a suffix that could
still grow into one is held back until the next piece decides it. On a match, the text
before the stop string is released and generation ends (the stop string itself is not
returned, as in OpenAI's API).
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: list[str]):
        self._stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """Add a piece of text; return (text safe to emit, whether a stop string matched)."""
        self._pending += piece
        if not self._stops:
            out, self._pending = self._pending, ""
            return out, False
        first = min((i for i in (self._pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if first >= 0:
            out, self._pending = self._pending[:first], ""
            return out, True
        hold = self._held_suffix()
        cut = len(self._pending) - hold
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out, False

    def flush(self) -> str:
        """Release whatever is held back (generation ended for another reason)."""
        out, self._pending = self._pending, ""
        return out

    def _held_suffix(self) -> int:
        """Length of the longest suffix of the pending text that starts some stop string."""
        text = self._pending
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if stop.startswith(text[-n:]):
                    best = n
                    break
        return best

"""Placeholders back to the values they stand for, in an answer that comes in pieces."""

from __future__ import annotations

import re
from collections.abc import Mapping

_PLACEHOLDER = re.compile(r"<[A-Z_]+_\d+>")


class Restorer:
    """Turns placeholders back into their values in a text that comes in pieces: a
    piece that ends in what may be the start of a placeholder keeps it back until the
    next piece says."""

    def __init__(self, values: Mapping[str, str]):
        self._values = values
        self._held = ""

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def feed(self, piece: str) -> str:
        text, self._held = self._held + piece, ""
        out: list[str] = []
        at = 0
        while (start := text.find("<", at)) >= 0:
            out.append(text[at:start])
            m = _PLACEHOLDER.match(text, start)
            if m and m.group() in self._values:
                out.append(self._values[m.group()])
                at = m.end()
                continue
            rest = text[start:]
            if any(p.startswith(rest) and p != rest for p in self._values):
                self._held = rest  # maybe the start of one: wait for the next piece
                return "".join(out)
            out.append("<")
            at = start + 1
        out.append(text[at:])
        return "".join(out)

"""Log probabilities in OpenAI's two shapes: chat's `logprobs.content` entries, and the
legacy completions' parallel lists (with each token's offset in the text)."""

from __future__ import annotations

from typing import Any

from inferplane.events import TokenLogprob


def chat(entries: list[TokenLogprob]) -> dict[str, Any]:
    """A chat choice's (or chunk's) `logprobs`."""
    return {
        "content": [
            {
                "token": token,
                "logprob": logprob,
                "bytes": raw,
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": b} for t, b, lp in alternatives
                ],
            }
            for token, raw, logprob, alternatives in entries
        ],
        "refusal": None,
    }


class TextLogprobs:
    """A completion's `logprobs`, chunk after chunk: `text_offset` runs on from the
    echoed prompt (if any) through the tokens already reported."""

    def __init__(self, offset: int = 0):
        self._offset = offset

    def __call__(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        offsets = []
        for token, _, _, _ in entries:
            offsets.append(self._offset)
            self._offset += len(token)
        return {
            "tokens": [token for token, _, _, _ in entries],
            "token_logprobs": [logprob for _, _, logprob, _ in entries],
            "top_logprobs": [{t: lp for t, _, lp in alts} for _, _, _, alts in entries],
            "text_offset": offsets,
        }

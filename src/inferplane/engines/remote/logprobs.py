"""An OpenAI-compatible upstream's log probabilities, in both of OpenAI's shapes (chat's
`logprobs.content` entries, the legacy completions' parallel lists), as the pipeline's
`TokenLogprob`s; and how each endpoint asks for them.

Tokens without `bytes` (the completions shape has none; llama.cpp's servers send null)
get their text's UTF-8. Alternatives come most likely first, as many as were asked:
some servers add the chosen token to the top ones (llama-cpp-python's completions).
"""

from __future__ import annotations

from typing import Any

from inferplane.errors import UpstreamError
from inferplane.events import Alternative, TokenLogprob


def asked(alternatives: int, chat: bool) -> dict[str, Any]:
    """The request's fields asking for each token's log probability and `alternatives`
    others."""
    return {"logprobs": True, "top_logprobs": alternatives} if chat else {"logprobs": alternatives}


def read(choice: dict[str, Any], chat: bool, alternatives: int) -> list[TokenLogprob] | None:
    """The log probabilities a choice (or a streamed chunk's choice) carries, if any."""
    given = choice.get("logprobs")
    if not given:
        return None
    try:
        if chat:
            return [_chat_entry(entry, alternatives) for entry in given.get("content") or []]
        return [
            _text_entry(token, logprob, top, alternatives)
            for token, logprob, top in zip(
                given["tokens"], given["token_logprobs"], given["top_logprobs"], strict=True
            )
        ]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise UpstreamError(
            "The upstream sent malformed log probabilities.", reason="server_error"
        ) from exc


def _chat_entry(entry: dict[str, Any], alternatives: int) -> TokenLogprob:
    top = [
        (str(alt["token"]), _utf8(alt["token"], alt.get("bytes")), float(alt["logprob"]))
        for alt in entry.get("top_logprobs") or []
    ]
    token = str(entry["token"])
    return (
        token,
        _utf8(token, entry.get("bytes")),
        float(entry["logprob"]),
        _best(top, alternatives),
    )


def _text_entry(token: Any, logprob: Any, top: Any, alternatives: int) -> TokenLogprob:
    alts = [(str(t), _utf8(t, None), float(lp)) for t, lp in (top or {}).items()]
    return str(token), _utf8(token, None), float(logprob), _best(alts, alternatives)


def _best(top: list[Alternative], alternatives: int) -> list[Alternative]:
    return sorted(top, key=lambda alt: -alt[2])[:alternatives]


def _utf8(token: Any, given: Any) -> list[int]:
    if given is None:
        return list(str(token).encode())
    return [int(b) for b in given]

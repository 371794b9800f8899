"""Request parameters no engine here honours yet: refused by name, never dropped.

OpenAI's API (and the open servers' common extensions to it) has parameters that change
what a model answers: tools, structured outputs, log probabilities... A server that
ignores one answers something else than what was asked (free text where JSON was
required, no tool call where one was), and the caller finds out late or never. So a
parameter in this table is accepted only with a value that asks for nothing (its
default, as if it were absent); any other value is a 400 naming it
(`unsupported_parameter`, as OpenAI answers a model that lacks one).

Parameters the schemas hold may still be beyond one engine (Anthropic's API has no
seed): the engine says so (`Engine.refusal`), and routing leaves it out.

Parameters outside this table and outside the request schemas are ignored, as most
OpenAI-compatible servers do: SDKs and frameworks send extras that do not change the
result (`prompt_cache_key`, `safety_identifier`, `parallel_tool_calls` without tools...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from inferplane.errors import UnsupportedParameter

# name -> the values that ask for nothing (None: the JSON null, as if absent).
_NONE: tuple[Any, ...] = (None,)
_CHAT: dict[str, tuple[Any, ...]] = {
    # OpenAI's deprecated forerunners of `tools` and `tool_choice`.
    "functions": (None, []),
    "function_call": (None, "none"),
    # Output kinds and features of other kinds of model.
    "audio": _NONE,
    "modalities": (None, ["text"]),
    "prediction": _NONE,
    "reasoning_effort": _NONE,
    "verbosity": _NONE,
    "web_search_options": _NONE,
    "moderation": _NONE,
    # Stored for OpenAI's distillation and evals products: not stored here.
    "store": (None, False),
    # Processing tiers: this server has one.
    "service_tier": (None, "auto", "default"),
}
_COMPLETIONS: dict[str, tuple[Any, ...]] = {
    "response_format": (None, {"type": "text"}),  # vLLM's and llama.cpp's, here too
    "best_of": (None, 1),
    "suffix": (None, ""),
}
# What vLLM, llama.cpp's server and TGI accept beside OpenAI's parameters, and callers
# send to self-hosted models (`extra_body`); `top_k`, `min_p` and `repetition_penalty`
# are in the request schema (honoured).
_EXTENSIONS: dict[str, tuple[Any, ...]] = {
    "typical_p": (None, 1, 1.0),
    "min_tokens": (None, 0),
    "ignore_eos": (None, False),
    "allowed_token_ids": (None, []),
    "bad_words": (None, []),
    "stop_token_ids": (None, []),
    "prompt_logprobs": (None, 0),
    "logits_processors": (None, []),
    "structured_outputs": _NONE,
    "n_probs": (None, 0),
    "mirostat": (None, 0),
    "dry_multiplier": (None, 0, 0.0),
    "xtc_probability": (None, 0, 0.0),
    "top_n_sigma": (None, -1, -1.0),
    "guided_json": _NONE,
    "guided_regex": _NONE,
    "guided_choice": _NONE,
    "guided_grammar": _NONE,
    "grammar": _NONE,
    "json_schema": _NONE,
}
CHAT_UNSUPPORTED: Mapping[str, tuple[Any, ...]] = {**_EXTENSIONS, **_CHAT}
COMPLETIONS_UNSUPPORTED: Mapping[str, tuple[Any, ...]] = {**_EXTENSIONS, **_COMPLETIONS}


def refuse_unsupported(extra: Mapping[str, Any], table: Mapping[str, tuple[Any, ...]]) -> None:
    """400 naming the first parameter of `extra` (the fields outside the request's
    schema) that the table lists, with a value that asks for something."""
    for name, value in extra.items():
        neutral = table.get(name)
        if neutral is not None and not _asks_nothing(value, neutral):
            raise UnsupportedParameter(name)


def _asks_nothing(value: Any, neutral: tuple[Any, ...]) -> bool:
    # By type as well as value: JSON's `true` is not 1 here, nor `false` 0.
    return any(type(value) is type(n) and value == n for n in neutral)

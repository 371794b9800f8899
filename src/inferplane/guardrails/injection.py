"""Prompt-injection scoring: normalise the text (undo the usual obfuscations), then a
logistic regression over hashed character n-grams and word pairs, trained on the
labelled set the repo ships (`bench/data/guardrails/injection/train.jsonl`; weights in
`guardrails/data/injection.npz`, made by `bench/train_injection.py`).

Character n-grams read any script, so attacks in other languages are features too; the
normalisation maps what obfuscation hides back onto the plain text: Unicode
compatibility forms (NFKC), invisible tag characters read as the ASCII they stand for,
zero-width and other format characters dropped, Cyrillic
and Greek look-alike letters mapped to Latin, letters spaced out (`i g n o r e`) joined,
leetspeak digits read as letters, and long base64 runs decoded and appended. A long text
is scored in overlapping windows, the highest counting, so an instruction buried in a
long document is not diluted by it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BUCKETS = 1 << 18
WINDOW, STRIDE = 600, 400  # characters: a window per 400, overlapping by 200
_WEIGHTS = Path(__file__).with_name("data") / "injection.npz"

_FORMAT = re.compile(
    r"[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]"
)
# Cyrillic and Greek letters that look Latin, and the Latin letters they pass for.
_LOOKALIKE = str.maketrans(
    "\u0410\u0412\u0415\u041a\u041c\u041d\u041e\u0420\u0421\u0422\u0423\u0425\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0456\u0458"
    "\u0501\u0261\u04bb\u0391\u0392\u0395\u0396\u0397\u0399\u039a\u039c\u039d\u039f\u03a1\u03a4\u03a5\u03a7\u03b1\u03bf\u03b9\u03bd",
    "ABEKMHOPCTYXaeopcyxijdghABEZHIKMNOPTYXaoiv",
)
_LEET = str.maketrans("013457@$", "oieastas")
# Unicode tag characters spell ASCII invisibly (U+E0041 is an invisible "A"): read them.
_TAGS = {cp: cp - 0xE0000 for cp in range(0xE0020, 0xE007F)}
_SPACED = re.compile(r"\b(?:\w[ .\-_*]){3,}\w\b")
_BASE64 = re.compile(r"[A-Za-z0-9+/]{24,}={0,2}")
_WORDS = re.compile(r"\w+")


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = _FORMAT.sub("", text.translate(_TAGS)).translate(_LOOKALIKE)
    text = _SPACED.sub(lambda m: re.sub(r"[ .\-_*]", "", m.group()), text)
    decoded = [_decoded(m.group()) for m in _BASE64.finditer(text)]
    text = " ".join([text, *(d for d in decoded if d)])
    return text.lower()


def _decoded(run: str) -> str | None:
    try:
        raw = base64.b64decode(run + "=" * (-len(run) % 4), validate=True)
        plain = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    printable = sum(c.isprintable() or c.isspace() for c in plain)
    return plain if plain and printable / len(plain) > 0.95 else None


def positioned(text: str) -> tuple[np.ndarray, np.ndarray]:
    """The hashed feature ids of a normalised text with where each starts: character
    3- to 5-grams (of the text and of it with leetspeak read as letters) and words,
    hashed in numpy (a polynomial hash of the code points: one pass per n, not one call
    per n-gram)."""
    ids: list[np.ndarray] = []
    at: list[np.ndarray] = []
    for variant, salt in ((text, 0), (text.translate(_LEET), 7)):
        codes = np.frombuffer(f" {variant} ".encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        for n in (3, 4, 5):
            if len(codes) < n:
                continue
            h = np.full(len(codes) - n + 1, n * 1_000_003 + salt, dtype=np.uint64)
            for k in range(n):
                h = (h * np.uint64(1_000_003) + codes[k : len(codes) - n + 1 + k]) % _PRIME
            ids.append((h % BUCKETS).astype(np.int64))
            at.append(np.arange(len(h)))
    words = [(m.start(), m.group()) for m in _WORDS.finditer(text)]
    if words:
        ids.append(np.array([_hash(f"w{w}") for _, w in words], dtype=np.int64))
        at.append(np.array([i for i, _ in words]))
    if not ids:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(ids), np.concatenate(at)


_PRIME = np.uint64((1 << 61) - 1)


def features(text: str) -> np.ndarray:
    """The distinct hashed feature ids of a normalised text."""
    return np.unique(positioned(text)[0])


def _hash(feature: str) -> int:
    return zlib.crc32(feature.encode()) % BUCKETS


def _starts(length: int) -> range:
    """Where the windows of a text of `length` characters start."""
    return range(0, max(1, length - WINDOW + STRIDE), STRIDE)


DEFAULT_THRESHOLD = 0.6  # chosen on the dev set: see docs/performance.md


@functools.cache
def model() -> Model:
    """The shipped weights, read once (a missing file stops start-up: `policy.configured`)."""
    return Model.load()


@dataclass(frozen=True)
class Model:
    weights: np.ndarray  # float32, BUCKETS
    bias: float

    @classmethod
    def load(cls, path: Path = _WEIGHTS) -> Model:
        with np.load(path) as data:
            return cls(data["weights"].astype(np.float32), float(data["bias"]))

    def score(self, text: str) -> float:
        """The probability that the text carries an injection: its most suspicious
        window's."""
        plain = normalise(text)
        ids, at = positioned(plain)
        best = max(
            _logit(self.weights, np.unique(ids[(at >= start) & (at < start + WINDOW)]))
            for start in _starts(len(plain))
        )
        return float(1.0 / (1.0 + np.exp(-(best + self.bias))))


def _logit(weights: np.ndarray, ids: np.ndarray) -> float:
    """The features' weights summed over the square root of their count (binary features
    normalised to unit length: long and short texts on one scale)."""
    return float(weights[ids].sum()) / max(1.0, float(np.sqrt(len(ids))))


def train(
    texts: list[str], labels: list[int], *, epochs: int = 500, rate: float = 50.0, l2: float = 1e-5
) -> Model:
    """Logistic regression by full-batch gradient descent over whole texts (scoring reads
    windows of them: an instruction buried in a document stands out in its window)."""
    rows = [features(normalise(text)) for text in texts]
    lengths = np.array([len(r) for r in rows])
    norm = 1.0 / np.sqrt(np.maximum(lengths, 1))
    owner = np.repeat(np.arange(len(rows)), lengths)
    ids = np.concatenate(rows)
    target = np.array(labels, dtype=np.float64)
    weights = np.zeros(BUCKETS, dtype=np.float64)
    bias = 0.0
    for _ in range(epochs):
        logits = np.bincount(owner, weights=weights[ids], minlength=len(rows)) * norm + bias
        error = 1.0 / (1.0 + np.exp(-logits)) - target
        gradient = np.bincount(ids, weights=(error * norm)[owner], minlength=BUCKETS)
        weights -= rate * (gradient / len(rows) + l2 * weights)
        bias -= rate * float(error.mean())
    return Model(weights.astype(np.float32), bias)

"""Picking a sequence's next token from its logits row, in numpy, without llama.cpp's
sampler chain.

llama.cpp's chain builds a candidate array over the whole vocabulary (262k entries for
Gemma 3) and sorts it for top-p: ~0.8 ms a row, against ~0.02 ms for greedy decoding's
argmax. Here a sampled row costs one exponential pass over the row and one comparison,
then exact work on the few tokens that carry the mass. In llama.cpp's order (its
server's chain), with the same results:

1. penalties (presence, frequency) on the tokens this sequence generated, the last 64
   of them, as llama.cpp's penalties sampler does (on a copy of the row);
2. top-p on the probabilities at temperature 1: the smallest set of most likely tokens
   whose probability reaches p. The weights `exp(logit - max)` are summed once; the
   tokens above a bar (lowered tenfold until they hold p of the mass) hold the nucleus,
   and only those in the last band are sorted;
3. temperature, and a draw: from the nucleus; or, without top-p, from the whole row's
   tempered weights: from the few heavy tokens when the draw falls among them, else
   (rarely) from the rest.

With temperature 0 (and penalties), the adjusted row's argmax. A request's draws come
from its own generator, seeded from its `seed` when it has one: the same seed, the same
logits, the same tokens.
"""

from __future__ import annotations

import random
from collections import Counter, deque

import numpy as np

from inferplane.engines.worker.protocol import Sampling

_PENALTY_LAST_N = 64  # llama.cpp's default window for the penalties


class TokenPicker:
    """One sequence's way of picking tokens: its parameters, generator and history."""

    __slots__ = ("_counts", "_frequency", "_history", "_presence", "_rng", "greedy", "params")

    def __init__(self, params: Sampling):
        self.params = params
        self._presence, self._frequency = params.presence_penalty, params.frequency_penalty
        # Plain greedy: the engine takes the row's argmax itself.
        self.greedy = params.temperature <= 0 and not (self._presence or self._frequency)
        seed = params.seed if params.seed is not None else random.getrandbits(64)
        self._rng = np.random.Generator(np.random.PCG64(seed & 0xFFFFFFFFFFFFFFFF))
        self._history: deque[int] = deque()
        self._counts: Counter[int] = Counter()

    def pick(self, row: np.ndarray) -> int:
        """The next token from this sequence's logits row (not modified)."""
        if self._counts:
            row = self._penalised(row)
        temperature = self.params.temperature
        token = int(row.argmax()) if temperature <= 0 else self._draw(row, temperature)
        self._accept(token)
        return token

    def _penalised(self, row: np.ndarray) -> np.ndarray:
        row = row.copy()
        tokens = np.fromiter(self._counts.keys(), dtype=np.intp, count=len(self._counts))
        counts = np.fromiter(self._counts.values(), dtype=np.float32, count=len(self._counts))
        row[tokens] -= counts * self._frequency + self._presence
        return row

    def _draw(self, row: np.ndarray, temperature: float) -> int:
        top_p = self.params.top_p
        # Top-p's probabilities are at temperature 1; without it, draw at T directly.
        scale = 1.0 if top_p < 1.0 else 1.0 / temperature
        weights = np.exp((row - row.max()) * np.float32(scale))  # the top token's: 1
        total = float(weights.sum())
        if top_p < 1.0:
            nucleus = _nucleus(weights, total * top_p)
            tempered = weights[nucleus] ** np.float32(1.0 / temperature)
            return int(nucleus[_index(tempered, self._rng.random())])
        heavy = np.flatnonzero(weights >= _BAR)
        mass = float(weights[heavy].sum())
        at = self._rng.random() * total
        if at < mass:
            return int(heavy[_index(weights[heavy], at / mass)])
        rest = np.flatnonzero(weights < _BAR)
        return int(rest[_index(weights[rest], (at - mass) / (total - mass))])

    def _accept(self, token: int) -> None:
        if not (self._presence or self._frequency):
            return
        self._history.append(token)
        self._counts[token] += 1
        if len(self._history) > _PENALTY_LAST_N:
            old = self._history.popleft()
            self._counts[old] -= 1
            if not self._counts[old]:
                del self._counts[old]


_BAR = 1e-3  # weights (relative to the top token's) above this are the heavy tokens


def _index(weights: np.ndarray, u: float) -> int:
    """Where `u` in [0, 1) falls among `weights` laid end to end."""
    cumulative = np.cumsum(weights, dtype=np.float64)
    at = int(np.searchsorted(cumulative, u * cumulative[-1], side="right"))
    return min(at, len(weights) - 1)


def _nucleus(weights: np.ndarray, target: float) -> np.ndarray:
    """The most likely tokens whose weights first reach `target` (llama.cpp's top-p:
    sorted by weight, up to and including the one that reaches it)."""
    bar, above, above_mass = 0.1, np.empty(0, dtype=np.intp), 0.0
    kept = np.flatnonzero(weights >= bar)
    mass = float(weights[kept].sum())
    while mass < target and bar > 1e-30:
        above, above_mass = kept, mass
        bar *= 0.1
        kept = np.flatnonzero(weights >= bar)
        mass = float(weights[kept].sum())
    # Every token of `above` is in; then the heaviest of the last band until `target`.
    band = kept[weights[kept] < bar * 10] if len(above) else kept
    band = band[np.argsort(-weights[band], kind="stable")]
    cumulative = above_mass + np.cumsum(weights[band], dtype=np.float64)
    n = int(np.searchsorted(cumulative, target)) + 1
    return np.concatenate([above, band[:n]])

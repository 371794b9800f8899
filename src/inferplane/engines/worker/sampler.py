"""Picking a sequence's next token from its logits row, in numpy, without llama.cpp's
sampler chain.

llama.cpp's chain builds a candidate array over the whole vocabulary (262k entries for
Gemma 3) and sorts it for top-p: ~0.8 ms a row, against ~0.02 ms for greedy decoding's
argmax. Here a sampled row costs one exponential pass over the row and one comparison,
then exact work on the few tokens that carry the mass. In llama.cpp's order (its
common sampler: logit bias, then its server's chain), with the same results:

1. logit bias, then penalties on the tokens this sequence generated, the last 64 of
   them, as llama.cpp's penalties sampler: repetition (a positive logit divided by it,
   a negative one multiplied), then frequency (times the count) and presence (once);
   on a copy of the row;
2. truncation, on the probabilities at temperature 1 (`exp(logit - max)`, summed once):
   top-k (the k most likely), top-p (the smallest set of most likely tokens whose
   probability reaches p of what is left), min-p (those at least p times as likely
   as the most likely). The heavy tokens are found by lowering a bar tenfold until
   enough lie above it; only the last band is sorted;
3. temperature, and a draw: from what truncation kept; with no truncation, from the
   whole row's tempered weights: from the few heavy tokens when the draw falls among
   them, else (rarely) from the rest.

With temperature 0 (below 1e-6), the adjusted row's argmax. A request's draws come from its own
generator, seeded from its `seed` when it has one: the same seed, the same logits, the
same tokens.
"""

from __future__ import annotations

import random
import threading
from collections import Counter, deque

import numpy as np

from inferplane.engines.worker.grammar import Grammar
from inferplane.engines.worker.protocol import Sampling

_PENALTY_LAST_N = 64  # llama.cpp's default window for the penalties
_MIN_TEMPERATURE = 1e-6  # lower temperatures decode greedily


class TokenPicker:
    """One sequence's way of picking tokens: its parameters, generator and history."""

    __slots__ = (
        "_bias",
        "_counts",
        "_history",
        "_penalised",
        "_rng",
        "grammar",
        "greedy",
        "params",
    )

    def __init__(self, params: Sampling, grammar: Grammar | None = None):
        self.params = params
        self.grammar = grammar  # what the output must follow (`grammar.py`)
        self._penalised = bool(
            params.presence_penalty or params.frequency_penalty or params.repetition_penalty != 1
        )
        self._bias = (
            (
                np.array([t for t, _ in params.logit_bias], dtype=np.intp),
                np.array([b for _, b in params.logit_bias], dtype=np.float32),
            )
            if params.logit_bias
            else None
        )
        # Plain greedy: the engine takes the row's argmax itself.
        self.greedy = (
            params.temperature < _MIN_TEMPERATURE
            and not self._penalised
            and self._bias is None
            and grammar is None
        )
        seed = params.seed if params.seed is not None else random.getrandbits(64)
        self._rng = np.random.Generator(np.random.PCG64(seed & 0xFFFFFFFFFFFFFFFF))
        self._history: deque[int] = deque()
        self._counts: Counter[int] = Counter()

    def pick(self, row: np.ndarray) -> int:
        """The next token from this sequence's logits row (not modified)."""
        if self._bias is not None or self._counts:
            row = self._adjusted(row)
        token = self._choose(row)
        grammar = self.grammar
        if grammar is not None:
            if not grammar.allows(token):
                token = self._allowed(row, grammar)
            grammar.accept(token)
        if self._penalised:
            self._accept(token)
        return token

    def _choose(self, row: np.ndarray) -> int:
        temperature = self.params.temperature
        # Below this, the draw is the argmax in all but float rounding (and 1 / T would
        # overflow float32 on the way).
        if temperature < _MIN_TEMPERATURE:
            return int(row.argmax())
        return int(self._draw(row, temperature, self._rng.random(1))[0])

    def _allowed(self, row: np.ndarray, grammar: Grammar) -> int:
        """A token the grammar allows, the first pick having been refused: exactly as
        if drawn from the allowed tokens alone, without masking the vocabulary (~40 ms
        on Gemma's 262k tokens) where a few questions (~10 us each) find one.

        Greedy: the most likely tokens in order, until one is allowed (the allowed
        argmax; one tied with a token beyond those asked is left to the mask, whose
        argmax takes the lowest id). Sampled without truncation: more draws from the
        same distribution, until one is allowed (rejection sampling: the first allowed
        draw comes out with probability p(t) / P, P the allowed tokens' mass). Either
        way, when none of the first `_TRIES` is allowed, the vocabulary is masked and
        the pick made among the rest: still exact (rejection that gives up after n
        draws and then draws from the allowed tokens returns t with
        p(t)(1 - (1 - P)^n) / P + (1 - P)^n p(t) / P). Under top-k, top-p or min-p
        the mask comes at once: a truncation of the whole row is not the truncation of
        the allowed tokens, and llama.cpp's sampler (which this one follows) masks
        then truncates after a refused first draw."""
        p = self.params
        if p.temperature < _MIN_TEMPERATURE:
            top = np.argpartition(row, -_TRIES)[-_TRIES:]
            candidates = top[np.lexsort((top, -row[top]))]  # argmax's order: ties by id
            bar = row[candidates[-1]]
        elif 0 < p.top_k < len(row) or p.top_p < 1.0 or p.min_p > 0:
            candidates, bar = np.empty(0, dtype=np.intp), None
        else:
            candidates = self._draw(row, p.temperature, self._rng.random(_TRIES))
            bar = None
        asked: dict[int, bool] = {}
        for token in candidates.tolist():
            allowed = asked.get(token)
            if allowed is None:
                allowed = asked[token] = grammar.allows(token)
            if allowed and (bar is None or row[token] > bar):
                return int(token)
            if allowed:
                break  # tied with the last asked: maybe with one not asked too
        return self._choose(np.where(grammar.mask(), row, np.float32(-np.inf)))

    def close(self) -> None:
        if self.grammar is not None:
            self.grammar.close()

    def _adjusted(self, row: np.ndarray) -> np.ndarray:
        row = row.copy()
        if self._bias is not None:
            tokens, bias = self._bias
            row[tokens] += bias
        if self._counts:
            p = self.params
            tokens = np.fromiter(self._counts.keys(), dtype=np.intp, count=len(self._counts))
            counts = np.fromiter(self._counts.values(), dtype=np.float32, count=len(tokens))
            logits = row[tokens]
            if p.repetition_penalty != 1:
                repeat = np.float32(p.repetition_penalty)
                logits = np.where(logits <= 0, logits * repeat, logits / repeat)
            row[tokens] = logits - (counts * p.frequency_penalty + p.presence_penalty)
        return row

    def _draw(self, row: np.ndarray, temperature: float, at: np.ndarray) -> np.ndarray:
        """Tokens drawn from the row at `temperature` (after truncation), one for each
        uniform number in `at`."""
        p = self.params
        truncated = 0 < p.top_k < len(row) or p.top_p < 1.0 or p.min_p > 0
        # Truncation reads probabilities at temperature 1; without it, draw at T directly.
        weights = _weights(row, 1.0 if truncated else 1.0 / temperature)  # the top's: 1
        if truncated:
            kept = _truncated(weights, p.top_k, p.top_p, p.min_p)
            tempered = weights[kept] ** np.float32(1.0 / temperature)
            drawn: np.ndarray = kept[_indices(tempered, at)]
            return drawn
        heavy = np.flatnonzero(weights >= _BAR)
        heavy_weights = weights[heavy]
        mass = float(heavy_weights.sum(dtype=np.float64))
        rest_mass = float(weights.sum()) - mass
        at = at * (mass + rest_mass)
        light = at >= mass
        if not light.any() or rest_mass <= 0:
            drawn = heavy[_indices(heavy_weights, np.minimum(at / mass, 1.0))]
            return drawn
        out = np.empty(len(at), dtype=np.intp)
        out[~light] = heavy[_indices(heavy_weights, at[~light] / mass)]
        rest = np.flatnonzero(weights < _BAR)
        rest_weights = weights[rest]
        if not rest_weights.any():  # all below float32's range: only the heavy ones
            out[light] = heavy[_indices(heavy_weights, self._rng.random(int(light.sum())))]
        else:
            out[light] = rest[_indices(rest_weights, (at[light] - mass) / rest_mass)]
        return out

    def _accept(self, token: int) -> None:
        self._history.append(token)
        self._counts[token] += 1
        if len(self._history) > _PENALTY_LAST_N:
            old = self._history.popleft()
            self._counts[old] -= 1
            if not self._counts[old]:
                del self._counts[old]


def log_probabilities(
    row: np.ndarray, token: int, top: int
) -> tuple[float, list[tuple[int, float]]]:
    """The model's own log probability of `token` (the softmax of the raw logits row,
    before any bias, penalty or temperature: what OpenAI's `logprobs` report), and the
    `top` most likely tokens with theirs, most likely first."""
    top_logit = row.max()
    weights = np.exp(row - top_logit)
    log_total = float(top_logit) + float(np.log(weights.sum(dtype=np.float64)))
    # The `top` largest logits themselves (weights underflow far below the top).
    alternatives = np.argpartition(row, -top)[-top:] if top else np.empty(0, dtype=np.intp)
    alternatives = alternatives[np.argsort(-row[alternatives], kind="stable")]
    return (
        float(row[token]) - log_total,
        [(int(t), float(row[t]) - log_total) for t in alternatives],
    )


_BAR = 1e-3  # weights (relative to the top token's) above this are the heavy tokens
# Picks tried before masking the vocabulary when a grammar refuses the first.
_TRIES = 32


_scratch = threading.local()


def _weights(row: np.ndarray, scale: float) -> np.ndarray:
    """`exp((row - max) * scale)`, the top token's weight 1, into this thread's buffer
    (valid until its next call): a fresh 1 MB array per row cost more than the
    arithmetic, measured (page faults)."""
    out: np.ndarray | None = getattr(_scratch, "weights", None)
    if out is None or len(out) != len(row):
        out = _scratch.weights = np.empty(len(row), dtype=np.float32)
    np.subtract(row, row.max(), out=out)
    if scale != 1.0:
        np.multiply(out, np.float32(scale), out=out)
    np.exp(out, out=out)
    return out


def _indices(weights: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Where each of `at` (in [0, 1)) falls among `weights` laid end to end."""
    cumulative = np.cumsum(weights, dtype=np.float64)
    where = np.searchsorted(cumulative, at * cumulative[-1], side="right")
    out: np.ndarray = np.minimum(where, len(weights) - 1)
    return out


def _truncated(weights: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """The tokens top-k, then top-p, then min-p keep (weights: the top token's is 1)."""
    if 0 < top_k < len(weights):
        kept = _heaviest(weights, count=top_k)
        if top_p < 1.0:
            cumulative = np.cumsum(weights[kept], dtype=np.float64)
            kept = kept[: int(np.searchsorted(cumulative, top_p * cumulative[-1])) + 1]
    elif top_p < 1.0:
        kept = _heaviest(weights, mass=top_p * float(weights.sum()))
    else:
        return np.flatnonzero(weights >= min_p)
    return kept[weights[kept] >= min_p] if min_p > 0 else kept


def _heaviest(weights: np.ndarray, *, count: int = 0, mass: float = 0.0) -> np.ndarray:
    """The heaviest tokens, heaviest first: the first `count` of them, or the first
    whose weights reach `mass` (up to and including the one that reaches it: llama.cpp's
    top-p). Tokens above a bar lowered tenfold until enough lie above it are all in;
    only the last band is sorted."""
    bar, above, above_mass = 0.1, np.empty(0, dtype=np.intp), 0.0
    kept = np.flatnonzero(weights >= bar)
    got = float(weights[kept].sum())

    def enough() -> bool:
        return len(kept) >= count if count else got >= mass

    while not enough() and bar > 1e-30:
        above, above_mass = kept, got
        bar *= 0.1
        kept = np.flatnonzero(weights >= bar)
        got = float(weights[kept].sum())
    above = above[np.argsort(-weights[above], kind="stable")]
    band = kept[weights[kept] < bar * 10] if len(above) else kept
    band = band[np.argsort(-weights[band], kind="stable")]
    if count:
        return np.concatenate([above, band[: count - len(above)]])
    cumulative = above_mass + np.cumsum(weights[band], dtype=np.float64)
    return np.concatenate([above, band[: int(np.searchsorted(cumulative, mass)) + 1]])

"""The numpy token picker draws from the same distribution as llama.cpp's sampler chain
(tested statistically on fixed logits, against the chain itself), is reproducible with
a seed, and penalises exactly as llama.cpp's penalties sampler."""

from __future__ import annotations

import ctypes
from collections import Counter
from typing import Any

import llama_cpp as L
import numpy as np
import pytest
from scipy.stats import chi2_contingency, chisquare

from inferplane.engines.worker.protocol import Sampling
from inferplane.engines.worker.sampler import TokenPicker, log_probabilities

VOCAB = 48
DRAWS = 20_000


def _logits(seed: int, scale: float = 2.5) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=VOCAB) * scale).astype(np.float32)


def _chain(params: Sampling, *, penalties: bool = False) -> Any:
    """llama.cpp's chain for `params`, in its common sampler's order."""
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    add = L.llama_sampler_chain_add
    if params.logit_bias:
        biases = (L.llama_logit_bias * len(params.logit_bias))(
            *(L.llama_logit_bias(t, b) for t, b in params.logit_bias)
        )
        add(chain, L.llama_sampler_init_logit_bias(VOCAB, len(params.logit_bias), biases))
    if penalties:
        p = params
        add(
            chain,
            L.llama_sampler_init_penalties(
                VOCAB, 64, p.repetition_penalty, p.frequency_penalty, p.presence_penalty
            ),
        )
    if params.temperature <= 0:
        add(chain, L.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        add(chain, L.llama_sampler_init_top_k(params.top_k))
    add(chain, L.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0:
        add(chain, L.llama_sampler_init_min_p(params.min_p, 1))
    add(chain, L.llama_sampler_init_temp(params.temperature))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(params.seed or 0))
    return chain


def _llama_pick(chain: Any, row: np.ndarray) -> int:
    """What llama.cpp's chain picks from `row` (and accepts into its history)."""
    data = (L.llama_token_data * len(row))(
        *(L.llama_token_data(i, float(v), 0.0) for i, v in enumerate(row))
    )
    array = L.llama_token_data_array(
        data=ctypes.cast(data, ctypes.POINTER(L.llama_token_data)),
        size=len(row),
        selected=-1,
        sorted=False,
    )
    L.llama_sampler_apply(chain, ctypes.byref(array))
    token = int(array.data[array.selected].id)
    L.llama_sampler_accept(chain, token)
    return token


def _same_distribution(a: Counter[int], b: Counter[int]) -> float:
    """The chi-square test's p-value that two samples come from one distribution
    (tokens drawn fewer than 20 times in both pooled into one column)."""
    tokens = sorted(set(a) | set(b))
    rare = [t for t in tokens if a[t] + b[t] < 20]
    columns = [[a[t], b[t]] for t in tokens if t not in rare]
    if rare:
        columns.append([sum(a[t] for t in rare), sum(b[t] for t in rare)])
    return float(chi2_contingency(np.array(columns).T).pvalue)


CASES = [
    Sampling(temperature=0.8, top_p=0.95, seed=1),
    Sampling(temperature=1.0, top_p=1.0, seed=2),
    Sampling(temperature=1.5, top_p=0.5, seed=3),
    Sampling(temperature=0.3, top_p=1.0, seed=4),
    Sampling(temperature=1.2, top_k=10, seed=6),
    Sampling(temperature=0.9, top_k=12, top_p=0.8, seed=7),
    Sampling(temperature=1.3, min_p=0.05, seed=8),
    Sampling(temperature=1.0, top_k=20, top_p=0.9, min_p=0.02, seed=9),
    Sampling(temperature=0.7, logit_bias=((0, 3.0), (5, -100.0), (17, 1.5)), seed=10),
]


def _case(p: Sampling) -> str:
    return f"T{p.temperature}-p{p.top_p}-k{p.top_k}-min{p.min_p}-bias{len(p.logit_bias)}"


@pytest.mark.parametrize("params", CASES, ids=_case)
def test_the_same_distribution_as_llama_cpps_chain(params: Sampling) -> None:
    row = _logits(params.seed or 0)
    chain = _chain(params)
    try:
        theirs = Counter(_llama_pick(chain, row) for _ in range(DRAWS))
    finally:
        L.llama_sampler_free(chain)
    picker = TokenPicker(params)
    ours = Counter(picker.pick(row) for _ in range(DRAWS))
    assert _same_distribution(ours, theirs) > 1e-3


def test_the_comparison_tells_a_different_distribution_apart() -> None:
    """The test above can fail: temperature applied before top-p (the other common
    order) is a different distribution, and the same number of draws shows it."""
    params = Sampling(temperature=0.5, top_p=0.8, seed=5)
    row = _logits(5)
    chain = _chain(params)
    try:
        theirs = Counter(_llama_pick(chain, row) for _ in range(DRAWS))
    finally:
        L.llama_sampler_free(chain)
    tempered_first = TokenPicker(Sampling(temperature=1.0, top_p=0.8, seed=5))
    ours = Counter(tempered_first.pick(row / 0.5) for _ in range(DRAWS))
    assert _same_distribution(ours, theirs) < 1e-6


def test_a_seed_gives_the_same_tokens_again() -> None:
    rows = [_logits(i, scale=1.0) for i in range(50)]

    def run(seed: int) -> list[int]:
        picker = TokenPicker(Sampling(temperature=1.0, top_p=0.9, seed=seed))
        return [picker.pick(row) for row in rows]

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_the_row_is_not_modified() -> None:
    row = _logits(3)
    before = row.copy()
    picker = TokenPicker(Sampling(temperature=0.7, frequency_penalty=1.0, presence_penalty=0.5))
    for _ in range(10):
        picker.pick(row)
    assert np.array_equal(row, before)


@pytest.mark.parametrize(
    ("frequency", "presence", "repetition"),
    [(0.8, 0.0, 1.0), (0.0, 1.5, 1.0), (0.5, -0.4, 1.0), (0.0, 0.0, 1.3), (0.3, 0.2, 0.8)],
)
def test_penalties_as_llama_cpps(frequency: float, presence: float, repetition: float) -> None:
    """Greedy decoding with penalties picks what llama.cpp's chain picks, step by step,
    over 200 steps (more than its 64-token window) of close logits."""
    params = Sampling(
        temperature=0.0,
        frequency_penalty=frequency,
        presence_penalty=presence,
        repetition_penalty=repetition,
    )
    chain = _chain(params, penalties=True)
    picker = TokenPicker(params)
    rng = np.random.default_rng(9)
    try:
        for _ in range(200):
            row = (rng.normal(size=VOCAB) * 0.3).astype(np.float32)
            assert picker.pick(row) == _llama_pick(chain, row)
    finally:
        L.llama_sampler_free(chain)


def test_plain_greedy_is_left_to_the_engine() -> None:
    assert TokenPicker(Sampling(temperature=0.0)).greedy
    assert not TokenPicker(Sampling(temperature=0.0, presence_penalty=0.1)).greedy
    assert not TokenPicker(Sampling(temperature=0.0, repetition_penalty=1.1)).greedy
    assert not TokenPicker(Sampling(temperature=0.0, logit_bias=((1, 5.0),))).greedy
    assert not TokenPicker(Sampling(temperature=0.5)).greedy


def test_a_token_far_below_the_top_is_never_a_candidate_but_the_rest_are() -> None:
    row = np.full(VOCAB, -100.0, dtype=np.float32)
    row[[3, 7, 9]] = [2.0, 1.9, 1.8]
    picker = TokenPicker(Sampling(temperature=2.0, seed=1))
    assert {picker.pick(row) for _ in range(500)} == {3, 7, 9}


def test_a_greedy_logit_bias_moves_the_argmax() -> None:
    row = _logits(12)
    low = int(row.argmin())
    picker = TokenPicker(Sampling(temperature=0.0, logit_bias=((low, 100.0),)))
    assert picker.pick(row) == low


def test_log_probabilities_are_the_rows_log_softmax() -> None:
    row = _logits(13, scale=4.0)
    exact = row.astype(np.float64) - np.log(np.exp(row.astype(np.float64)).sum())
    token = int(np.argsort(row)[VOCAB // 2])  # any token, not only the likeliest
    logprob, alternatives = log_probabilities(row, token, 5)
    assert logprob == pytest.approx(exact[token], abs=1e-5)
    expected = [int(t) for t in np.argsort(-row)[:5]]
    assert [t for t, _ in alternatives] == expected
    assert [lp for _, lp in alternatives] == pytest.approx([exact[t] for t in expected], abs=1e-5)
    assert log_probabilities(row, token, 0)[1] == []


class _Last:
    """numpy's generator, cornered: the largest draw below 1."""

    def random(self, size: int) -> np.ndarray:
        return np.full(size, 1.0 - 2.0**-53)


def test_a_token_of_no_weight_is_never_drawn() -> None:
    """A few tokens near the top, the rest so far below that their weights underflow to
    0: even the last possible draw picks one of the few (a rounding gap between sums
    once picked the vocabulary's last token)."""
    row = np.full(4096, -200.0, dtype=np.float32)
    near = [5, 77, 1000, 2048]
    row[near] = [0.0, -1.0, -2.5, -3.0]
    for temperature in (0.2, 1.0):
        picker = TokenPicker(Sampling(temperature=temperature))
        picker._rng = _Last()  # type: ignore[assignment]
        assert picker.pick(row) in near


def test_as_many_alternatives_as_asked_even_far_below_the_top() -> None:
    row = np.full(VOCAB, -500.0, dtype=np.float32)
    row[7] = 0.0
    row[[3, 9]] = [-150.0, -300.0]
    logprob, alternatives = log_probabilities(row, 7, 5)
    assert logprob == pytest.approx(0.0, abs=1e-6)
    assert [t for t, _ in alternatives][:3] == [7, 3, 9] and len(alternatives) == 5
    assert alternatives[1][1] == pytest.approx(-150.0, abs=1e-3)


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-7])
def test_a_vanishing_temperature_is_greedy(temperature: float) -> None:
    """1 / T overflows float32 for the smallest (a fuzzed request sent 5e-324 and the
    NaNs took the worker down); below 1e-6 the draw is the argmax."""
    row = _logits(14)
    picker = TokenPicker(Sampling(temperature=temperature, top_p=0.9, presence_penalty=0.1))
    assert picker.pick(row) == int(row.argmax())
    assert TokenPicker(Sampling(temperature=temperature)).greedy


class _Allowing:
    """A grammar that allows a fixed set of tokens (llama.cpp's grammar sampler's part,
    played by a set)."""

    def __init__(self, allowed: set[int]):
        self.allowed = allowed
        self.masks = 0
        self.accepted: list[int] = []

    def allows(self, token: int) -> bool:
        return token in self.allowed

    def mask(self) -> np.ndarray:
        self.masks += 1
        return np.isin(np.arange(VOCAB), sorted(self.allowed))

    def accept(self, token: int) -> None:
        self.accepted.append(token)

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("allowed_ranks", "masked"),
    [
        (range(1, 12, 2), False),  # some mass: found by drawing again
        (range(45, 48), True),  # almost none: the vocabulary is masked
    ],
)
def test_a_grammar_draws_from_the_allowed_tokens_only_in_their_proportions(
    allowed_ranks: range, masked: bool
) -> None:
    """A refused draw is followed by more draws, then by a mask if none is allowed:
    exactly the distribution restricted to the allowed tokens, either way."""
    row = _logits(15, scale=1.5)
    allowed = {int(t) for t in np.argsort(-row)[list(allowed_ranks)]}  # not the likeliest
    grammar = _Allowing(allowed)
    picker = TokenPicker(Sampling(temperature=0.9, seed=3), grammar)  # type: ignore[arg-type]
    ours = Counter(picker.pick(row) for _ in range(DRAWS))
    assert set(ours) <= allowed
    assert set(grammar.accepted) <= allowed and len(grammar.accepted) == DRAWS
    weights = np.exp((row.astype(np.float64) - row.max()) / 0.9)
    kept = sorted(allowed)
    expected = weights[kept] / weights[kept].sum() * DRAWS
    observed = np.array([ours[t] for t in kept])
    assert chisquare(observed, expected).pvalue > 1e-3
    assert (grammar.masks > DRAWS // 2) if masked else (grammar.masks < DRAWS // 100)


@pytest.mark.parametrize(("ranks", "masked"), [((3, 7), False), ((40, 45), True)])
def test_greedy_under_a_grammar_is_the_best_allowed_token(
    ranks: tuple[int, int], masked: bool
) -> None:
    row = _logits(16)
    order = [int(t) for t in np.argsort(-row)]
    grammar = _Allowing({order[r] for r in ranks})
    picker = TokenPicker(Sampling(temperature=0.0), grammar)  # type: ignore[arg-type]
    assert not picker.greedy  # the engine's own argmax would skip the grammar
    assert picker.pick(row) == order[ranks[0]]
    assert grammar.masks == int(masked)  # beyond the likeliest few, the vocabulary's


@pytest.mark.parametrize("truncation", [{"top_k": 2}, {"top_p": 0.85}])
def test_under_truncation_a_refused_draw_masks_then_truncates(truncation: dict[str, Any]) -> None:
    """As llama.cpp's sampler: a first draw from the truncated row, and when the grammar
    refuses it, the allowed tokens truncated again (not more draws from the first
    truncation, which would never give C here)."""
    row = np.full(VOCAB, -50.0, dtype=np.float32)
    a, b, c = 3, 11, 29
    row[[a, b, c]] = np.log([0.6, 0.3, 0.1]).astype(np.float32)
    grammar = _Allowing({b, c})
    picker = TokenPicker(Sampling(temperature=1.0, seed=5, **truncation), grammar)  # type: ignore[arg-type]
    drawn = Counter(picker.pick(row) for _ in range(DRAWS))
    # A (2/3 after truncation to A, B) refused, then B or C at 3:1.
    expected = {b: DRAWS * (1 / 3 + 2 / 3 * 0.75), c: DRAWS * (2 / 3 * 0.25)}
    assert chisquare([drawn[b], drawn[c]], [expected[b], expected[c]]).pvalue > 1e-3

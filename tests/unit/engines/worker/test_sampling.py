"""Sampler chains from a request's parameters, on the real llama.cpp library."""

from __future__ import annotations

import llama_cpp as L

from inferplane.engines.worker.protocol import Sampling
from inferplane.engines.worker.sampling import sampler_chain

N_VOCAB = 1000


def test_plain_greedy_decoding_has_no_chain() -> None:
    # The engine takes the argmax of the logits row itself (much cheaper).
    assert sampler_chain(L, N_VOCAB, Sampling.of({"temperature": 0})) is None
    assert sampler_chain(L, N_VOCAB, Sampling(temperature=0.0, top_p=0.5, seed=1)) is None


def test_penalties_or_temperature_build_a_chain() -> None:
    cases = [
        ({"temperature": 0, "presence_penalty": 0.5}, 2),  # penalties, greedy
        ({"temperature": 0, "frequency_penalty": 0.5}, 2),
        ({"temperature": 0.7, "seed": 3}, 3),  # top_p, temperature, dist
        ({}, 3),  # OpenAI's default temperature is 1
        ({"temperature": 1.0, "presence_penalty": 1.0, "seed": -1}, 4),
    ]
    for msg, length in cases:
        chain = sampler_chain(L, N_VOCAB, Sampling.of(msg))
        assert chain is not None, msg
        try:
            assert L.llama_sampler_chain_n(chain) == length, msg
        finally:
            L.llama_sampler_free(chain)

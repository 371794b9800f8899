"""A request's llama.cpp sampler chain, built from its sampling parameters."""

from __future__ import annotations

import random
from typing import Any

from inferplane.engines.worker.protocol import Sampling


def sampler_chain(L: Any, n_vocab: int, params: Sampling) -> Any:
    """The request's llama.cpp sampler chain (`L` is the `llama_cpp` module); None for
    plain greedy decoding, which the engine does by taking the argmax of the logits row
    itself: 0.04 ms instead of llama.cpp's 0.8 ms (it builds a candidate array over the
    whole 262k vocabulary first), 11 % of an 8-sequence step. Both pick the first of
    equal maxima. The caller frees a chain with `llama_sampler_free`."""
    presence, frequency = params.presence_penalty, params.frequency_penalty
    temperature = params.temperature
    if temperature <= 0 and not (presence or frequency):
        return None
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    if presence or frequency:
        L.llama_sampler_chain_add(
            chain,
            L.llama_sampler_init_penalties(n_vocab, 64, 1.0, frequency, presence),
        )
    if temperature <= 0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        return chain
    seed = params.seed
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(params.top_p, 1))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(temperature))
    L.llama_sampler_chain_add(
        chain,
        L.llama_sampler_init_dist(
            seed & 0xFFFFFFFF if seed is not None else random.getrandbits(32)
        ),
    )
    return chain

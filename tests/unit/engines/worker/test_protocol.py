"""The gateway's requests to a worker: typed ops, written by one side and read by the other."""

from __future__ import annotations

import pytest

from inferplane.engines.worker import protocol
from inferplane.engines.worker.protocol import (
    Embed,
    Generate,
    Sampling,
    decode,
    encode,
    parse,
    wire,
)


def _through_the_socket(op: protocol.Op, rid: int) -> protocol.Message:
    return decode(encode(wire(op, rid)))


def test_a_generation_reads_back_as_it_was_sent() -> None:
    op = Generate(
        tokens=[2, 105, 4521],
        max_tokens=64,
        stop=["\n\n", "</s>"],
        lstrip=True,
        sampling=Sampling(
            temperature=0.7,
            top_p=0.9,
            seed=-3,
            presence_penalty=0.5,
            top_k=40,
            min_p=0.05,
            repetition_penalty=1.1,
            logit_bias=((7, -100.0), (31, 2.5)),
        ),
        scope="org-1",
    )
    msg = _through_the_socket(op, 17)
    assert msg["id"] == 17 and msg["op"] == "generate"
    assert parse(msg) == op


def test_an_embedding_reads_back_as_it_was_sent() -> None:
    op = Embed(["one", "zwei ünd drei"])
    msg = _through_the_socket(op, 4)
    assert msg == {"op": "embed", "id": 4, "input": ["one", "zwei ünd drei"]}
    assert parse(msg) == op


def test_absent_or_null_sampling_parameters_take_openais_defaults() -> None:
    assert Sampling.of({}) == Sampling(1.0, 1.0, None, 0.0, 0.0)
    assert Sampling.of({"temperature": None, "top_p": None, "seed": None}) == Sampling()
    assert Sampling.of({"temperature": 0, "seed": 9}) == Sampling(temperature=0.0, seed=9)
    # OpenAI's logit_bias keys are token ids as strings; kept sorted by id.
    bias = Sampling.of({"logit_bias": {"31": 2.5, "7": -100}}).logit_bias
    assert bias == ((7, -100.0), (31, 2.5))


@pytest.mark.parametrize(
    "msg",
    [
        {"op": "generate", "id": 1, "max_tokens": 5},  # no tokens
        {"op": "generate", "id": 1, "tokens": [1], "max_tokens": None},
        {"op": "embed", "id": 1},
        {"op": "train", "id": 1},
    ],
)
def test_a_malformed_or_unknown_request_is_refused(msg: protocol.Message) -> None:
    with pytest.raises(ValueError):
        parse(msg)

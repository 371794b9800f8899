"""The complexity classifier's decision rule, with a bag-of-words embedder standing in
for the embedding model (the real one runs in tests/e2e/test_complexity.py)."""

from __future__ import annotations

import asyncio
import zlib

import numpy as np
import pytest

from inferplane.routing.complexity import ComplexityClassifier

LARGE = ["prove the theorem step by step", "design a distributed system in detail"]
SMALL = ["hi there", "what is the capital of france"]


class BagOfWords:
    """Each word lights one of 64 dimensions; counts the texts it was asked to embed."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(texts)
        rows = np.zeros((len(texts), 64), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                rows[i, zlib.crc32(word.encode()) % 64] += 1.0
        return rows


def test_nearest_examples_decide_and_examples_are_embedded_once() -> None:
    embed = BagOfWords()
    classifier = ComplexityClassifier(embed, LARGE, SMALL)

    async def run() -> list[bool]:
        return [
            await classifier.is_large(text)
            for text in ("prove this step by step", "hi", "design a system", "capital of spain")
        ]

    assert asyncio.run(run()) == [True, False, True, False]
    # The examples once (in one batch), then one text per request.
    assert embed.calls[0] == LARGE + SMALL
    assert [len(c) for c in embed.calls[1:]] == [1, 1, 1, 1]


@pytest.mark.parametrize(("margin", "large"), [(-1.0, True), (0.0, True), (0.99, False)])
def test_the_margin_moves_the_boundary(margin: float, large: bool) -> None:
    classifier = ComplexityClassifier(BagOfWords(), LARGE, SMALL, margin=margin)
    assert asyncio.run(classifier.is_large("prove step")) is large


def test_a_request_is_judged_by_its_final_user_turn_or_its_prompt() -> None:
    embed = BagOfWords()
    classifier = ComplexityClassifier(embed, LARGE, SMALL)
    chat = {
        "messages": [
            {"role": "system", "content": "hi there"},
            {"role": "user", "content": "prove the theorem step by step"},
            {"role": "assistant", "content": "what is the capital"},
        ]
    }

    async def run() -> list[bool]:
        return [
            await classifier.judge(chat),
            await classifier.judge({"prompt": "hi there"}),
            await classifier.judge({"messages": [{"role": "system", "content": "prove"}]}),
        ]

    assert asyncio.run(run()) == [True, False, False]
    # The user's turn and the prompt were embedded; a chat with no user turn was not.
    assert embed.calls[1:] == [["prove the theorem step by step"], ["hi there"]]

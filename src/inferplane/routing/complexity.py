"""Complexity routing's optional classifier: does a request need the large model?

A small local embedding model (e.g. the bundled all-MiniLM-L6-v2) embeds the request's
final user turn; the request is "large" when it is closer to the examples of prompts
that need a large model than to the examples of prompts a small one answers well (the
mean cosine similarity of the `k` nearest examples of each side, plus a margin). The
examples are configurable per alias; the defaults below are generic English ones. This
is the semantic-router approach (nearest labelled utterances), with no training step:
the examples are embedded once, on first use.

A classifier that fails or is slow (its worker down) decides nothing: the request is
routed by the prompt-token threshold alone, and the failure is counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

Embed = Callable[[list[str]], Awaitable[np.ndarray]]  # texts -> float32 rows
# What is read of the final user turn (the embedding model reads a few hundred tokens),
# and how long a verdict may take before it is given up on.
READ_CHARS = 4_000
TIMEOUT_S = 2.0

DEFAULT_LARGE: tuple[str, ...] = (
    "Prove that there are infinitely many prime numbers, step by step.",
    "Write a detailed design document for a distributed job scheduler with failover.",
    "Implement a red-black tree in Rust with insertion and deletion, and explain it.",
    "Analyse the trade-offs between consistency and availability in replicated databases.",
    "Refactor this large module to remove the circular dependencies and add tests.",
    "Compare three approaches to carbon pricing and recommend one, with evidence.",
    "Explain the proof of the central limit theorem and where its assumptions fail.",
    "Draft a contract clause limiting liability under German and French law.",
    "Find the bug in this concurrent code and explain the race condition in detail.",
    "Summarise this 30-page research paper and critique its methodology.",
    "Plan a six-month roadmap to migrate our data platform to the cloud, with risks.",
    "Solve this optimisation problem with Lagrange multipliers and justify each step.",
    "Explain in depth how a garbage collector works, with the algorithms and examples.",
)
DEFAULT_SMALL: tuple[str, ...] = (
    "Hi!",
    "Thanks, that's all.",
    "What is the capital of Italy?",
    "How do you say 'thank you' in Spanish?",
    "What's 12 plus 30?",
    "Give me a synonym for happy.",
    "What day comes after Monday?",
    "Is a tomato a fruit?",
    "Convert 5 kilometres to miles.",
    "Who wrote Romeo and Juliet?",
    "Tell me a short joke.",
    "Correct the spelling: recieve.",
)


class ComplexityClassifier:
    def __init__(
        self,
        embed: Embed,
        large: Sequence[str] = DEFAULT_LARGE,
        small: Sequence[str] = DEFAULT_SMALL,
        *,
        margin: float = 0.0,
        k: int = 3,
    ):
        self._embed = embed
        self._examples = (list(large), list(small))
        self._margin = margin
        self._k = k
        self._vectors: tuple[np.ndarray, np.ndarray] | None = None
        self._lock = asyncio.Lock()

    async def judge(self, prompt_input: dict[str, Any]) -> bool:
        """Whether the request (its final user turn, or its prompt) needs a large model;
        TimeoutError after `TIMEOUT_S`."""
        text = final_user_text(prompt_input)
        if not text:
            return False
        async with asyncio.timeout(TIMEOUT_S):
            return await self.is_large(text[:READ_CHARS])

    async def is_large(self, text: str) -> bool:
        large, small = await self._example_vectors()
        (vector,) = _unit(await self._embed([text]))
        return self._score(large, vector) - self._score(small, vector) > self._margin

    def _score(self, examples: np.ndarray, vector: np.ndarray) -> float:
        sims = examples @ vector
        k = min(self._k, len(sims))
        return float(np.partition(sims, len(sims) - k)[-k:].mean())

    async def _example_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        async with self._lock:
            if self._vectors is None:
                large, small = self._examples
                rows = _unit(await self._embed(large + small))
                self._vectors = (rows[: len(large)], rows[len(large) :])
            return self._vectors


def final_user_text(prompt_input: dict[str, Any]) -> str:
    """The last user message of a chat, or a completion's prompt."""
    messages = prompt_input.get("messages")
    if messages is None:
        return str(prompt_input.get("prompt") or "")
    last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    return str((last or {}).get("content") or "")


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit: np.ndarray = rows / np.maximum(norms, 1e-12)
    return unit

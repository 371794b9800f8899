"""Continuous batching: aggregate decode throughput and time to first token at 1, 4, 8
and 16 concurrent streams, in one run, for
  (a) inferplane (default gemma deployment: 16 batched slots per tenant + 1 reserved),
  (b) llama-cpp-python's own OpenAI server (`python -m llama_cpp.server`), same GGUF,
  (c) the raw batched-decode limit: a loop over `llama_decode` with B sequences and no
      server at all.
Each of N closed-loop clients streams distinct prompts back to back for SECONDS,
decoding 0.5x to 1.5x `--tokens` tokens, greedy, sampled or sampled under a JSON schema
(`--mixes`: inferplane runs each; sampled is temperature 0.8 and top_p 0.95, what most
applications send; the schema mix goes through chat, and its answers end when their JSON
does; the raw loop and llama_cpp.server decode greedily), as serving benchmarks with a fixed
concurrency do (vLLM's `--max-concurrency`): after the first wave, in which all N
requests arrive at once, requests reach the server at staggered times. Throughput counts
the tokens received within the window; time to first token is reported for the first
wave and for the steady state after it. Last, the resident memory one more sequence
slot costs (its KV cache).

    .venv/bin/python bench/batching.py [--tokens 96] [--mixes greedy,sampled,json_schema]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from inferplane.config import load_settings  # noqa: E402
from inferplane.engines.local.assets import provision  # noqa: E402
from tests.e2e.server import free_port, running_server  # noqa: E402

STREAMS = (1, 4, 8, 16)
SECONDS = 20.0
_RECORD = {
    "type": "object",
    "properties": {
        "numbers": {"type": "array", "items": {"type": "integer"}},
        "note": {"type": "string"},
    },
    "required": ["numbers", "note"],
}
MIXES: dict[str, dict[str, Any]] = {
    "greedy": {"temperature": 0.0},
    "sampled": {"temperature": 0.8, "top_p": 0.95},
    # Sampled under a JSON schema (chat: /v1/completions has no response_format).
    "json_schema": {
        "temperature": 0.8,
        "top_p": 0.95,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "record", "schema": _RECORD},
        },
    },
}


def clients_run(
    client: openai.OpenAI,
    model: str,
    streams: int,
    tokens: int,
    seconds: float = SECONDS,
    sampling: dict[str, Any] = MIXES["greedy"],
) -> tuple[float, float, float, float]:
    """(aggregate completion tokens/s, median TTFT of the first wave, of the later
    requests, of all requests) for `streams` closed-loop clients sending requests for
    `seconds`."""
    first_wave: list[float] = []
    later: list[float] = []
    counts: list[int] = []
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds

    def one(i: int) -> None:
        r, n = 0, 0
        while time.perf_counter() < deadline:
            # Lengths vary (0.5x to 1.5x), as in any real mix, so the clients drift apart
            # after the first wave, the way requests reach a busy server.
            length = random.Random(i * 1000 + r).randint(tokens // 2, tokens * 3 // 2)
            sent = time.perf_counter()
            first = None
            with _stream(
                client, model, f"{i + r}, {i + r + 1}, {i + r + 2},", length, sampling
            ) as stream:
                for chunk in stream:
                    now = time.perf_counter()
                    if now >= deadline:
                        break  # tokens after the window do not count; the stream is closed
                    if _piece(chunk):
                        n += 1  # one streamed piece per token (no stop strings here)
                        if first is None:
                            first = now - sent
            if first is not None:
                with lock:
                    (first_wave if r == 0 else later).append(first)
            r += 1
        with lock:
            counts.append(n)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # A server that keeps generating for a dropped stream would charge that work to the
    # next measurement: wait until a one-token request gets through.
    client.completions.create(model=model, prompt="1", max_tokens=1)
    return (
        sum(counts) / seconds,
        statistics.median(first_wave),
        statistics.median(later) if later else statistics.median(first_wave),
        statistics.median(first_wave + later),
    )


def _stream(
    client: openai.OpenAI, model: str, prompt: str, length: int, sampling: dict[str, Any]
) -> Any:
    """A streamed completion; a chat one for a mix with a response format."""
    if "response_format" in sampling:
        return client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"Continue as JSON: {prompt}"}],
            max_tokens=length,
            stream=True,
            **sampling,
        )
    return client.completions.create(
        model=model, prompt=prompt, max_tokens=length, stream=True, **sampling
    )


def _piece(chunk: Any) -> bool:
    """Whether a streamed chunk holds a generated piece (one per token)."""
    if not chunk.choices:
        return False
    choice = chunk.choices[0]
    return bool(
        getattr(choice, "text", None) or getattr(getattr(choice, "delta", None), "content", None)
    )


def raw_limit(gguf: Path, streams: int, tokens: int) -> float:
    """Tokens/s of bare batched decoding: B sequences, one llama_decode per step."""
    import llama_cpp as L
    from llama_cpp._internals import LlamaBatch, LlamaContext, LlamaModel
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=False):
        model = LlamaModel(
            path_model=str(gguf), params=L.llama_model_default_params(), verbose=False
        )
        params = L.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_seq_max = 512 * streams, 512, streams
        params.kv_unified, params.swa_full = False, True
        params.n_threads = params.n_threads_batch = os.cpu_count() or 2
        ctx = LlamaContext(model=model, params=params, verbose=False)
    batch = LlamaBatch(n_tokens=512, embd=0, n_seq_max=1, verbose=False)
    b = batch.batch
    prompts = [
        model.tokenize(f"{i}, {i + 1}, {i + 2},".encode(), True, True) for i in range(streams)
    ]
    n = 0
    for seq, prompt in enumerate(prompts):
        for pos, tok in enumerate(prompt):
            b.token[n], b.pos[n], b.n_seq_id[n] = tok, pos, 1
            b.seq_id[n][0], b.logits[n] = seq, pos == len(prompt) - 1
            n += 1
    b.n_tokens = n
    ctx.decode(batch)
    rows = [sum(len(p) for p in prompts[: i + 1]) - 1 for i in range(streams)]
    n_vocab = L.llama_vocab_n_tokens(model.vocab)

    def greedy(row: int) -> int:  # the argmax of a logits row, as the engine does
        logits = L.llama_get_logits_ith(ctx.ctx, row)
        return int(np.ctypeslib.as_array(logits, shape=(n_vocab,)).argmax())

    start = time.perf_counter()
    for step in range(tokens):
        toks = [greedy(rows[i]) for i in range(streams)]
        for i, tok in enumerate(toks):
            b.token[i], b.pos[i], b.n_seq_id[i] = tok, len(prompts[i]) + step, 1
            b.seq_id[i][0], b.logits[i] = i, True
        b.n_tokens = streams
        ctx.decode(batch)
        rows = list(range(streams))
    elapsed = time.perf_counter() - start
    ctx.close()
    model.close()
    return streams * tokens / elapsed


def memory_per_slot(gguf: Path, context: int) -> float:
    """MiB of resident memory one more sequence slot costs, as the engine sets its
    context up (`context` cells per slot, a full sliding-window cache): the growth
    from 1 to 17 slots, over 16."""
    import llama_cpp as L
    from llama_cpp._internals import LlamaContext, LlamaModel
    from llama_cpp._utils import suppress_stdout_stderr

    def resident() -> float:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    sizes = {}
    with suppress_stdout_stderr(disable=False):
        model = LlamaModel(
            path_model=str(gguf), params=L.llama_model_default_params(), verbose=False
        )
        for slots in (1, 17):
            before = resident()
            params = L.llama_context_default_params()
            params.n_ctx, params.n_seq_max = context * slots, slots
            params.n_batch = params.n_ubatch = 512
            params.kv_unified, params.swa_full = False, True
            ctx = LlamaContext(model=model, params=params, verbose=False)
            sizes[slots] = resident() - before
            ctx.close()
        model.close()
    return (sizes[17] - sizes[1]) / 16


def llama_cpp_server(gguf: Path, tokens: int) -> dict[int, tuple[float, float, float, float]]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            # Its default (true) cuts a running stream short whenever another request
            # arrives; off, it serves requests one after another, its best case.
            "--interrupt_requests",
            "false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).is_success:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("llama_cpp.server did not start")
            time.sleep(0.2)
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=600
        )
        clients_run(client, str(gguf), 1, 8, seconds=2)  # warm-up
        out = {n: clients_run(client, str(gguf), n, tokens) for n in STREAMS}
        client.close()
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--mixes", default="greedy,sampled,json_schema")
    args = parser.parse_args()
    mixes = args.mixes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        gguf = provision(load_settings(env={}).models[0], data).path
        ours: dict[str, dict[int, tuple[float, float, float, float]]] = {}
        with running_server(data) as server:
            client = server.client(timeout=600)
            clients_run(client, "gemma-3-270m", 2, 8, seconds=2)  # warm-up
            for mix in mixes:
                ours[mix] = {
                    n: clients_run(client, "gemma-3-270m", n, args.tokens, sampling=MIXES[mix])
                    for n in STREAMS
                }
        theirs = llama_cpp_server(gguf, args.tokens)
        raw = {n: raw_limit(gguf, n, args.tokens) for n in STREAMS}
        context = int(load_settings(env={}).models[0].context_size)
        per_slot = memory_per_slot(gguf, context)
    print(f"machine: {describe()}")
    print(
        f"gemma-3-270m Q4_K_M; N clients stream completions back to back for "
        f"{SECONDS:.0f} s, {args.tokens // 2}-{args.tokens * 3 // 2} tokens each"
    )
    print("tokens/s; TTFT ms: median of the first wave (all N arrive at once) / the rest")
    head = "".join(f"  {'inferplane ' + mix:>26}" for mix in mixes)
    print(f"  {'streams':>7}{head}  {'llama_cpp.server':>26}  {'raw batched':>11}")
    for n in STREAMS:
        cells = "".join(
            f"  {r:8.1f} ({w * 1000:6.1f} /{t * 1000:6.1f})"
            for r, w, t, _ in (ours[mix][n] for mix in mixes)
        )
        r2, w2, t2, _ = theirs[n]
        print(f"  {n:>7}{cells}  {r2:8.1f} ({w2 * 1000:6.1f} /{t2 * 1000:6.1f})  {raw[n]:11.1f}")
    print(f"  memory: {per_slot:.1f} MiB per sequence slot (KV cache of {context} tokens)")
    for mix in mixes:
        r1, _, t1, _ = ours[mix][1]
        r8, w8, t8, a8 = ours[mix][8]
        r16 = ours[mix][16][0]
        print(
            f"  {mix}: {r1 / raw[1]:.2f}x the raw limit at 1 stream, {r8 / raw[8]:.2f}x at 8, "
            f"{r16 / raw[16]:.2f}x at 16; at 8 streams {r8 / r1:.2f}x inferplane's single "
            f"stream, {r8 / theirs[8][0]:.2f}x llama_cpp.server; median TTFT {a8 / t1:.2f}x "
            f"single over all requests: {t8 / t1:.2f}x after the first wave, "
            f"{w8 / t1:.2f}x in it"
        )


if __name__ == "__main__":
    main()

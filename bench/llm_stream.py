"""Single-stream generation: the model called in-process vs through inferplane's HTTP API.

Both sides run the same GGUF with the same thread count, the same prompt and greedy
decoding of the same number of tokens, each prompt evaluated from scratch. Measured:
time to first token (request -> first text) and decode rate (tokens after the first /
time after the first). The in-process baseline is measured in the same run, before the
server starts, so the two never share the CPU.

    .venv/bin/python bench/llm_stream.py [--tokens 128] [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from inferplane.config import load_settings  # noqa: E402
from inferplane.engines.local.assets import provision  # noqa: E402
from tests.e2e.server import running_server  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def in_process(gguf: Path, tokens: int, runs: int) -> tuple[list[float], list[float]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=2048, verbose=False)
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    ttfts, rates = [], []
    for _ in range(runs + 1):  # the first run warms up
        llm.reset()
        start = time.perf_counter()
        stamps = []
        for token in llm.generate(prompt, temp=0.0, top_k=0, min_p=0.0, top_p=1.0):
            llm.detokenize([token])
            stamps.append(time.perf_counter())
            if len(stamps) == tokens:
                break
        ttfts.append(stamps[0] - start)
        rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    llm.close()
    return ttfts[1:], rates[1:]


def over_http(tokens: int, runs: int, data_dir: Path) -> tuple[list[float], list[float]]:
    with running_server(data_dir) as server:
        client = server.client()
        ttfts, rates = [], []
        for _ in range(runs + 1):
            start = time.perf_counter()
            stamps = []
            stream = client.completions.create(
                model="gemma-3-270m",
                prompt=PROMPT,
                max_tokens=tokens,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            n = 0
            for chunk in stream:
                if chunk.choices and chunk.choices[0].text:
                    stamps.append(time.perf_counter())
                if chunk.usage:
                    n = chunk.usage.completion_tokens
            ttfts.append(stamps[0] - start)
            # Text chunks can merge tokens (stop-string hold-back): rate from the token count.
            rates.append((n - 1) / (stamps[-1] - stamps[0]))
        return ttfts[1:], rates[1:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        spec = load_settings(env={}).models[0]
        gguf = provision(spec, data_dir).path
        base_ttft, base_rate = in_process(gguf, args.tokens, args.runs)
        http_ttft, http_rate = over_http(args.tokens, args.runs, data_dir)
    med = statistics.median
    print(f"machine: {describe()}")
    print(f"single stream, {args.tokens} tokens, {args.runs} runs, medians")
    print(f"  in-process : TTFT {med(base_ttft) * 1000:7.1f} ms   {med(base_rate):6.1f} tokens/s")
    print(f"  HTTP       : TTFT {med(http_ttft) * 1000:7.1f} ms   {med(http_rate):6.1f} tokens/s")
    print(
        f"  tokens/s ratio (HTTP / in-process): {med(http_rate) / med(base_rate):.3f}  (aim >= 0.9)"
    )
    print(
        f"  TTFT added by HTTP: {(med(http_ttft) - med(base_ttft)) * 1000:+.1f} ms  (aim <= 15 ms)"
    )


if __name__ == "__main__":
    main()

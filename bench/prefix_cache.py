"""Prefix reuse: time to first token of chat requests that share a long system prompt,
with the batched engine's prefix cache on and off, in one run.

One server serves the bundled GGUF twice: `cached` (prefix_cache: true, the default)
and `fresh` (prefix_cache: false). One client alternates between them, sending the same
system prompt with a different short question each time (greedy, a few tokens), and
the script prints the median time to first token of each, their ratio, and how many
answers the two gave identically.

    .venv/bin/python bench/prefix_cache.py [--system-words 300] [--requests 12]
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

POLICY = (
    "You are the support assistant of a company that sells bicycles, spare parts and "
    "repairs. Answer briefly and politely, never promise delivery dates, refer warranty "
    "questions to the service desk, and do not discuss competitors. "
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--system-words", type=int, default=300)
    parser.add_argument("--requests", type=int, default=12)
    args = parser.parse_args()
    words = POLICY.split()
    system = " ".join(words[i % len(words)] for i in range(args.system_words))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        gguf = provision(load_settings(env={}).models[0], data).path
        config = data / "models.yaml"
        config.write_text(
            "models:\n"
            + "".join(
                f"  - {{id: {name}, engine: llamacpp, path: {gguf}, parallel: 8, "
                f"prefix_cache: {flag}}}\n"
                for name, flag in (("cached", "true"), ("fresh", "false"))
            )
        )
        with running_server(data / "run", config=config) as server:
            client = server.client(timeout=600)
            ttft: dict[str, list[float]] = {"cached": [], "fresh": []}
            answers: dict[str, list[str]] = {"cached": [], "fresh": []}
            prompt_tokens = 0
            for i in range(args.requests + 1):
                for model in ("cached", "fresh") if i % 2 else ("fresh", "cached"):
                    start = time.perf_counter()
                    first, text = None, ""
                    stream = client.chat.completions.create(
                        model=model,
                        messages=[
                            {"role": "system", "content": system},
                            {"role": "user", "content": f"Question {i}: what is {i} + {i}?"},
                        ],
                        max_tokens=6,
                        temperature=0,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                    for chunk in stream:
                        if chunk.usage:
                            prompt_tokens = chunk.usage.prompt_tokens
                        if chunk.choices and chunk.choices[0].delta.content:
                            first = first or time.perf_counter() - start
                            text += chunk.choices[0].delta.content
                    if i:  # the first round fills the cache
                        ttft[model].append(first or 0.0)
                        answers[model].append(text)
    cached, fresh = statistics.median(ttft["cached"]), statistics.median(ttft["fresh"])
    same = sum(a == b for a, b in zip(answers["cached"], answers["fresh"], strict=True))
    print(f"machine: {describe()}")
    print(
        f"gemma-3-270m, chat with a shared {prompt_tokens}-token prompt (system + question), "
        f"{args.requests} requests each, one client"
    )
    print(f"  median TTFT: prefix cache {cached * 1000:.1f} ms, none {fresh * 1000:.1f} ms")
    print(
        f"  {fresh / cached:.1f}x faster to first token; "
        f"identical answers {same}/{len(answers['fresh'])}"
    )


if __name__ == "__main__":
    main()

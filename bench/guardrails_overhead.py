"""What the guardrails add to a request: the median latency of chat completions with a
1,000-token prompt through a model under a policy (secrets blocked, structured personal
data pseudonymised, a deny list flagged: the README's example) against the same through
a model under none, in the same run, against the same instant upstream
(`bench/fast_upstream.py`). Requests alternate between the two models, one at a time,
so that drift in the machine's speed hits both alike; the prompt holds a few personal
values (so pseudonymisation and restoring run) and no secret (so it is answered).

    .venv/bin/python bench/guardrails_overhead.py [--requests 400] [--words 750]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from tests.e2e.server import running_server  # noqa: E402
from tests.e2e.upstreams import fast_upstream  # noqa: E402

POLICY = """
guardrails:
  policies:
    - id: baseline
      input:
        - {id: no-secrets, detector: secrets, action: block}
        - {id: pii, detector: pii, action: pseudonymise}
        - {id: codename, detector: deny_list, words: [bluebird, redwing], action: flag}
"""

_PHRASES = [
    "the customer asked about an order",
    "shipped last week and the invoice total",
    "was higher than expected so please check",
    "the account history and reply with details",
    "about refunds delivery times warranty terms",
    "and the support plan",
]


def prompt(words: int, seed: int) -> str:
    """About `words` words of ticket-like prose (~1.3 tokens a word) with an e-mail
    address, a phone number and a card number in it."""
    rng = random.Random(seed)
    body: list[str] = []
    while len(body) < words:
        body += rng.choice(_PHRASES).split(" ")
    body = body[:words]
    body[words // 4] = f"jane.doe{seed}@example.org"
    body[words // 2] = "+44 20 7946 0958"
    body[3 * words // 4] = "4111 1111 1111 1111"
    return " ".join(body)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--words", type=int, default=750)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, fast_upstream() as upstream:
        config = Path(tmp) / "config.yaml"
        deployment = f'engine: openai_compatible, base_url: "{upstream}", model: fast'
        config.write_text(
            POLICY
            + f"""
models:
  - id: guarded
    policy: baseline
    deployments: [{{name: fast-guarded, {deployment}}}]
  - id: plain
    deployments: [{{name: fast-plain, {deployment}}}]
"""
        )
        with running_server(Path(tmp) / "data", config=config) as server:
            client = server.client()
            timings: dict[str, list[float]] = {"guarded": [], "plain": []}
            for i in range(args.requests + 20):
                for model in ("guarded", "plain") if i % 2 else ("plain", "guarded"):
                    text = prompt(args.words, i)
                    start = time.perf_counter()
                    client.chat.completions.create(
                        model=model, messages=[{"role": "user", "content": text}]
                    )
                    if i >= 20:  # the first 20 pairs warm up
                        timings[model].append(time.perf_counter() - start)
            tokens = len(prompt(args.words, 0)) // 4
    guarded, plain = (statistics.median(timings[m]) * 1000 for m in ("guarded", "plain"))
    print(f"machine: {describe()}")
    print(
        f"chat completions, a {args.words}-word prompt (~{tokens} tokens by 4 bytes a token) "
        f"with 3 personal values, {args.requests} requests per model, alternating"
    )
    print(f"  no policy : median {plain:7.2f} ms")
    print(f"  policy    : median {guarded:7.2f} ms")
    print(f"  added     : {guarded - plain:7.2f} ms at the median (aim < 10 ms)")


if __name__ == "__main__":
    main()

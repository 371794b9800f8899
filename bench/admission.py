"""Admission cost per request: authenticate + rate limits + budget + settle + ledger record.

Runs the real components in-process (SQLite store, the journaled ledger, and either the
in-memory limiter or the Redis one against a real `redis-server` this script starts) on
a key that has limits and a budget, and compares with the same loop on a key with none
of them (admission off: authentication and the ledger record only, which every request
pays). Prints medians per request in microseconds and the difference, for admission in
one step (a remote deployment: `Admitter.admit`) and in two (a local tokenizer counts the
prompt between them: `Admitter.enter`, then `Admitter.reserve`; no tokenizing here).

    .venv/bin/python bench/admission.py [--requests 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from bench.machine import describe  # noqa: E402
from inferplane.config.settings import ModelSpec  # noqa: E402
from inferplane.limits.budgets import BudgetTracker  # noqa: E402
from inferplane.limits.memory import Limiter, MemoryLimiter  # noqa: E402
from inferplane.limits.pricing import Price, PriceBook  # noqa: E402
from inferplane.limits.redis_budgets import RedisBudgets  # noqa: E402
from inferplane.limits.redis_limiter import RedisLimiter  # noqa: E402
from inferplane.pipeline.admission import Admitter, rate_scopes  # noqa: E402
from inferplane.pipeline.context import RequestContext  # noqa: E402
from inferplane.store.database import open_database, sqlite_url  # noqa: E402
from inferplane.telemetry.ledger import UsageLedger, UsageRecord, now_iso  # noqa: E402
from inferplane.tenancy.schemas import KeyCreate  # noqa: E402
from inferplane.tenancy.service import TenancyService  # noqa: E402
from inferplane.tenancy.store import TenancyStore  # noqa: E402
from tests.e2e.services import redis  # noqa: E402


class _Model:
    """The parts of a LocalModel that admission reads."""

    def __init__(self) -> None:
        self.id = "bench-model"
        self.spec = ModelSpec(id=self.id, engine="llamacpp", bundled="gemma3-270m-q4-k-m")


async def measure(
    tenancy: TenancyService,
    admitter: Admitter,
    ledger: UsageLedger,
    secret: str,
    n: int,
    two_steps: bool = False,
) -> list[float]:
    model: Any = _Model()
    times = []
    for i in range(n):
        start = time.perf_counter()
        principal = tenancy.authenticate(f"Bearer {secret}")
        ctx = RequestContext(f"req-{i}", principal, "completions")
        scopes = rate_scopes(principal, model.id, model.spec.limits)
        if two_steps:
            admission = await admitter.enter(ctx, model.id, scopes)
            await admitter.reserve(ctx, admission, 20, 16)
        else:
            admission = await admitter.admit(ctx, model.id, scopes, 20, 16)
        admission.settle(30, admission.cost(20, 10))
        ledger.record(
            UsageRecord(
                id=ctx.ledger_id,
                request_id=ctx.request_id,
                created_at=now_iso(),
                org_id=None,
                team_id=None,
                key_id=principal.key.id,
                user=None,
                endpoint="completions",
                model=model.id,
                deployment="local/bench",
                model_version="v",
                prompt_tokens=20,
                completion_tokens=10,
                cost_nusd=admission.cost(20, 10),
                price_id=None,
                latency_ms=1.0,
                ttft_ms=None,
                status=200,
            )
        )
        times.append(time.perf_counter() - start)
    return times


async def run(n: int, redis_url: str, data: Path) -> dict[str, float]:
    engine = open_database(sqlite_url(data))
    budgets = BudgetTracker(alert=lambda scope, spent: None)
    tenancy = TenancyService(TenancyStore(engine), budgets)
    limited = tenancy.store.create_key(
        KeyCreate.model_validate(
            {
                "name": "limited",
                "limits": {"rpm": 10**8, "tpm": 10**9, "max_parallel": 1000, "max_tokens": 4096},
                "budget": {"usd": 10**6, "period": "month"},
            }
        )
    )["key"]
    plain = tenancy.store.create_key(KeyCreate(name="plain"))["key"]
    tenancy.reload()
    prices = PriceBook(engine)
    prices.set("bench-model", Price(input_per_million=1, output_per_million=2))
    ledger = UsageLedger(engine, data / "ledger")
    await ledger.start()
    client = aioredis.from_url(redis_url)
    variants: dict[str, tuple[Limiter, Any]] = {
        "memory": (MemoryLimiter(), budgets),
        "redis": (RedisLimiter(client), RedisBudgets(client, budgets, lambda s, v: None)),
    }
    results: dict[str, float] = {}
    for name, (limiter, budget_impl) in variants.items():
        admitter = Admitter(limiter, budget_impl, prices, ledger)
        await measure(tenancy, admitter, ledger, limited, 200)  # warm-up
        off = await measure(tenancy, admitter, ledger, plain, n)
        on = await measure(tenancy, admitter, ledger, limited, n)
        two = await measure(tenancy, admitter, ledger, limited, n, two_steps=True)
        results[f"{name} off"] = statistics.median(off) * 1e6
        results[f"{name} on"] = statistics.median(on) * 1e6
        results[f"{name} two"] = statistics.median(two) * 1e6
    await ledger.close()
    await client.aclose()
    engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    with redis() as url, tempfile.TemporaryDirectory() as tmp:
        results = asyncio.run(run(args.requests, url, Path(tmp)))
    print(f"machine: {describe()}")
    print(f"admission per request, median of {args.requests}, in microseconds")
    for backend, aim in (("memory", 300), ("redis", 1000)):
        on, off = results[f"{backend} on"], results[f"{backend} off"]
        print(
            f"  {backend:6}: limits+budget on {on:7.1f} us, off {off:6.1f} us "
            f"(auth + ledger record) -> admission adds {on - off:6.1f} us; whole stage "
            f"{on:6.1f} us (aim < {aim} us)"
        )
        two = results[f"{backend} two"]
        print(f"          in two steps (local tokenizer) {two:7.1f} us, {two - on:+6.1f} us")


if __name__ == "__main__":
    main()

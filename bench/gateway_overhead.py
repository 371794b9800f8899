"""Gateway overhead: what inferplane adds in front of a fast upstream, in one run.

The upstream (`bench/fast_upstream.py`) answers instantly: a short chat completion, or
a stream of about 20 SSE events. Each target gets the same closed-loop load (keep-alive
connections, raw HTTP/1.1, for `--seconds` per level) at concurrency 1, 16 and 128:
  direct      the upstream itself (the baseline: latency with no gateway)
  relay       a bare TCP relay (`bench/tcp_relay.py`) on the gateway's core: the cost of
              the extra hop alone, the floor under any gateway's added latency
  inferplane  an alias with one openai_compatible deployment, called with a key that
              has rate limits and a budget (so admission, limits, budget, ledger and
              metrics all run)
  litellm     LiteLLM's proxy, when `--litellm-bin DIR` names a venv bin with it
The gateway process is pinned to CPU 0; the load generator and upstream run on CPU 1.
Reported per level: requests/s, added latency p50/p99 (target minus direct), and the
gateway's CPU-ms per request (its /proc utime + stime over the level); and its memory.

A closed loop at 16 or 128 clients keeps the gateway's core saturated, so its latency
there is queueing (Little's law: clients / requests/s), not what the gateway adds to a
request. The added latency under load is therefore also measured open loop ("paced"):
16 keep-alive connections, Poisson arrivals at a fixed rate, each request timed from
its scheduled arrival (so waiting for a free connection counts); the rates are a light
20 req/s, and a quarter and a half of inferplane's own closed-loop peak at 16 clients;
each target is compared with the upstream called directly at the same rate.

    .venv/bin/python bench/gateway_overhead.py [--seconds 8] [--litellm-bin /venv/bin]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from tests.e2e.server import free_port, running_server  # noqa: E402

LEVELS = (1, 16, 128)
PACED_CONNECTIONS = 16
LIGHT_RATE = 20.0
GATEWAY_CPU, CLIENT_CPU = {0}, {1}


@dataclass
class Target:
    name: str
    port: int
    key: str
    model: str
    pid: int | None  # the gateway process (None: the upstream itself)


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float | None
    errors: int


def _request(target: Target, stream: bool) -> bytes:
    body = json.dumps(
        {
            "model": target.model,
            "messages": [{"role": "user", "content": "Say hello"}],
            "max_tokens": 20,
            "stream": stream,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{target.port}\r\n"
        f"authorization: Bearer {target.key}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked = None, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def _load(target: Target, stream: bool, concurrency: int, seconds: float) -> Result:
    request = _request(target, stream)
    latencies: list[float] = []
    errors = 0
    warm_until = time.perf_counter() + 1.0
    stop_at = warm_until + seconds

    async def conn() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        try:
            while (now := time.perf_counter()) < stop_at:
                writer.write(request)
                status = await _read_response(reader)
                if now >= warm_until:
                    latencies.append(time.perf_counter() - now)
                    errors += status != 200
        finally:
            writer.close()

    tasks = [asyncio.create_task(conn()) for _ in range(concurrency)]
    await asyncio.sleep(max(0.0, warm_until - time.perf_counter()))
    cpu_start = _cpu_seconds(target.pid)
    await asyncio.gather(*tasks)
    cpu_end = _cpu_seconds(target.pid)
    measured = latencies  # only requests sent after the warm-up are recorded
    qs = statistics.quantiles(measured, n=100) if len(measured) > 1 else [measured[0]] * 99
    cpu = None
    if cpu_start is not None and cpu_end is not None:
        cpu = (cpu_end - cpu_start) * 1000 / max(1, len(measured))
    return Result(len(measured) / seconds, qs[49] * 1000, qs[98] * 1000, cpu, errors)


async def _paced(target: Target, stream: bool, rate: float, seconds: float) -> Result:
    """Open loop: Poisson arrivals at `rate` over 16 connections, latency from arrival."""
    request = _request(target, stream)
    due: asyncio.Queue[float | None] = asyncio.Queue()
    latencies: list[float] = []
    errors = 0
    arrivals = random.Random(16)

    async def conn() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        try:
            while (at := await due.get()) is not None:
                writer.write(request)
                status = await _read_response(reader)
                latencies.append(time.perf_counter() - at)
                errors += status != 200
        finally:
            writer.close()

    tasks = [asyncio.create_task(conn()) for _ in range(PACED_CONNECTIONS)]
    at = time.perf_counter() + 0.2
    end = at + seconds
    while at < end:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        due.put_nowait(at)
        at += arrivals.expovariate(rate)
    for _ in tasks:
        due.put_nowait(None)
    started = end - seconds
    await asyncio.gather(*tasks)
    finished = time.perf_counter()
    qs = statistics.quantiles(latencies, n=100)
    return Result(len(latencies) / (finished - started), qs[49] * 1000, qs[98] * 1000, None, errors)


@contextlib.contextmanager
def _alone(target: Target, targets: list[Target]) -> Iterator[None]:
    """The other gateways are paused (SIGSTOP) while one is measured: they share its
    core, and their background work would count against it. The load generator's own
    garbage collection is off meanwhile: its pauses (up to 40 ms, seen at the same
    request count in every run) would be charged to the target."""
    others = [t.pid for t in targets if t.pid is not None and t is not target]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def _cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _start(cmd: list[str], env: dict[str, str] | None = None, cpus: set[int] = CLIENT_CPU):
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )


def _wait_http(url: str, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def _litellm(bin_dir: Path, upstream: int, tmp: Path) -> tuple[subprocess.Popen[bytes], Target]:
    port = free_port()
    config = tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: fast\n    litellm_params:\n"
        f"      model: openai/fast\n      api_base: http://127.0.0.1:{upstream}/v1\n"
        "      api_key: none\n"
    )
    master = "sk-" + secrets.token_hex(32)  # LiteLLM refuses to start without one
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MASTER_KEY": master,
    }
    proc = _start(
        [
            str(bin_dir / "litellm"),
            "--config",
            str(config),
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        env,
        GATEWAY_CPU,
    )
    _wait_http(f"http://127.0.0.1:{port}/health/liveliness")
    return proc, Target("litellm", port, master, "fast", proc.pid)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--litellm-bin", type=Path)
    args = parser.parse_args()
    os.sched_setaffinity(0, CLIENT_CPU)
    upstream_port = free_port()
    upstream = _start(
        [sys.executable, str(ROOT / "bench" / "fast_upstream.py"), "--port", str(upstream_port)]
    )
    relay_port = free_port()
    relay = _start(
        [
            sys.executable,
            str(ROOT / "bench" / "tcp_relay.py"),
            "--port",
            str(relay_port),
            "--upstream",
            str(upstream_port),
        ],
        cpus=GATEWAY_CPU,
    )
    procs = [upstream, relay]
    try:
        _wait_http(f"http://127.0.0.1:{upstream_port}/v1/models")
        _wait_http(f"http://127.0.0.1:{relay_port}/v1/models")
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            config = tmp / "inferplane.yaml"
            config.write_text(
                "models:\n  - id: fast\n    deployments:\n      - name: fast-upstream\n"
                "        engine: openai_compatible\n"
                f"        base_url: http://127.0.0.1:{upstream_port}/v1\n        model: fast\n"
                "    pricing: {input_per_million: 0.1, output_per_million: 0.2}\n"
            )
            with running_server(tmp / "data", config=config, cpus=GATEWAY_CPU) as server:
                with server.http() as admin:
                    key = admin.post(
                        "/admin/v1/keys",
                        json={
                            "name": "bench",
                            "limits": {"rpm": 10**6, "tpm": 10**9},
                            "budget": {"usd": 10**6, "period": "day"},
                        },
                    ).json()["key"]
                port = int(server.base_url.rsplit(":", 1)[1])
                targets = [
                    Target("direct", upstream_port, "none", "fast", None),
                    Target("relay", relay_port, "none", "fast", relay.pid),
                    Target("inferplane", port, key, "fast", server.process.pid),
                ]
                if args.litellm_bin:
                    proc, target = _litellm(args.litellm_bin, upstream_port, tmp)
                    procs.append(proc)
                    targets.append(target)
                results: dict[tuple[str, bool, int], Result] = {}
                paced: dict[tuple[str, bool, float], Result] = {}
                for stream in (False, True):
                    for level in LEVELS:
                        for target in targets:
                            with _alone(target, targets):
                                results[target.name, stream, level] = uvloop.run(
                                    _load(target, stream, level, args.seconds)
                                )
                    peak = results["inferplane", stream, 16].rps
                    for rate in (LIGHT_RATE, round(peak / 4, -1), round(peak / 2, -1)):
                        for target in targets:
                            most = max(results[target.name, stream, lv].rps for lv in LEVELS)
                            if most < rate * 1.1:
                                continue  # over its capacity: the queue would only grow
                            with _alone(target, targets):
                                paced[target.name, stream, rate] = uvloop.run(
                                    _paced(target, stream, rate, args.seconds)
                                )
                memory = {t.name: _rss_mb(t.pid) for t in targets if t.pid is not None}
        _report(targets, results, memory, args.seconds)
        _report_paced(targets, paced, args.seconds)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


def _report(
    targets: list[Target],
    results: dict[tuple[str, bool, int], Result],
    memory: dict[str, float],
    seconds: float,
) -> None:
    print(f"machine: {describe()}")
    print(
        f"closed loop, {seconds:.0f} s per level; gateway pinned to CPU 0, client and upstream "
        "to CPU 1; added = target minus direct at the same level"
    )
    for stream in (False, True):
        print("streaming (~20 SSE events)" if stream else "non-streaming")
        print(
            f"  {'target':<11} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'added p50':>9} {'added p99':>9} {'CPU ms/req':>10} {'errors':>6}"
        )
        for level in LEVELS:
            base = results["direct", stream, level]
            for t in targets:
                r = results[t.name, stream, level]
                added = (
                    ""
                    if t.pid is None
                    else f"{r.p50_ms - base.p50_ms:9.2f} {r.p99_ms - base.p99_ms:9.2f}"
                )
                cpu = f"{r.cpu_ms:10.2f}" if r.cpu_ms is not None else f"{'':>10}"
                print(
                    f"  {t.name:<11} {level:>4} {r.rps:8.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} "
                    f"{added:>19} {cpu} {r.errors:>6}"
                )
    for name, mb in memory.items():
        print(f"  {name} memory (RSS after the run): {mb:.0f} MB")
    if "litellm" in memory:
        for stream in (False, True):
            ours = max(results["inferplane", stream, lv].rps for lv in LEVELS)
            theirs = max(results["litellm", stream, lv].rps for lv in LEVELS)
            cpu_ours = results["inferplane", stream, 16].cpu_ms or 0
            cpu_theirs = results["litellm", stream, 16].cpu_ms or 0
            less = cpu_theirs / max(cpu_ours, 1e-9)
            mode = "streaming" if stream else "non-streaming"
            print(
                f"  {mode}: {ours / theirs:.1f}x LiteLLM's requests/s (aim >= 20x); "
                f"CPU per request {less:.1f}x less"
            )


def _report_paced(
    targets: list[Target], paced: dict[tuple[str, bool, float], Result], seconds: float
) -> None:
    print(
        f"paced (open loop): {PACED_CONNECTIONS} connections, Poisson arrivals, {seconds:.0f} s "
        "per rate; latency from the scheduled arrival; added = target minus direct at the "
        "same rate"
    )
    for stream in (False, True):
        print("streaming (~20 SSE events)" if stream else "non-streaming")
        print(
            f"  {'target':<11} {'rate/s':>6} {'done/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'added p50':>9} {'added p99':>9} {'errors':>6}"
        )
        for rate in sorted({r for _, st, r in paced if st == stream}):
            base = paced["direct", stream, rate]
            for t in targets:
                if (t.name, stream, rate) not in paced:
                    print(f"  {t.name:<11} {rate:6.0f}  over its closed-loop capacity: not run")
                    continue
                r = paced[t.name, stream, rate]
                added = (
                    ""
                    if t.pid is None
                    else f"{r.p50_ms - base.p50_ms:9.2f} {r.p99_ms - base.p99_ms:9.2f}"
                )
                print(
                    f"  {t.name:<11} {rate:6.0f} {r.rps:8.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} "
                    f"{added:>19} {r.errors:>6}"
                )


if __name__ == "__main__":
    main()

"""HTTP-layer limits under attack: how much bad connections slow everyone else.

One gateway (an alias `fast` on `bench/fast_upstream.py`, short HTTP timeouts) is timed
on cheap authenticated requests (non-streaming chat completions, one after another on
one keep-alive connection from 127.0.0.1): first alone, then while an attacker process,
from 127.0.0.2, keeps up:
  - a 10 MB request header being sent, again and again (every 20 ms at most),
  - requests with 10,000 headers, again and again (every 20 ms at most),
  - 100 idle connections, 100 with half-sent headers and 20 with half-sent bodies
    (opened half a second before the timing, which ends well within the header
    timeout, so they are all open meanwhile).
Printed: both median latencies, their ratio, and what the attack got: the statuses of
its flood requests, and for its held connections what they were answered and the
longest any of them stayed open.

    .venv/bin/python bench/http_limits.py [--requests 40]
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.server import Server, running_server  # noqa: E402
from tests.e2e.upstreams import fast_upstream  # noqa: E402

HEADER_TIMEOUT_S = BODY_TIMEOUT_S = 3.0
ATTACKER = "127.0.0.2"
HELD = {"idle": 100, "half_head": 100, "half_body": 20}
FLOODS_MAX = 200  # attempts of each flood, at most
# One attempt of each flood per 20 ms at most: a refused attempt costs the gateway about
# what a served chat completion does (0.3 to 0.4 ms of CPU: accept, parse, answer, log),
# so back-to-back attempts measure a request flood, which is for rate limits, not what
# each attack costs.
FLOOD_EVERY_S = 0.02
SETTLE_S = 0.5  # for the gateway to accept the held connections (a one-off burst)
WATCH_S = 15.0  # how long the attacker watches its held connections, at most
CHAT = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@dataclass
class Figures:
    baseline_ms: float
    attack_ms: float
    attack: dict[str, Any]  # what the attacker saw (see `_attack`)

    @property
    def ratio(self) -> float:
        return self.attack_ms / self.baseline_ms


def config(upstream_url: str) -> str:
    return (
        f"server:\n  http: {{header_timeout_s: {HEADER_TIMEOUT_S}, "
        f"body_timeout_s: {BODY_TIMEOUT_S}}}\n"
        "models:\n  - id: fast\n    deployments:\n      - name: fast-upstream\n"
        f"        engine: openai_compatible\n        base_url: {upstream_url}\n"
        "        model: fast\n"
    )


@contextmanager
def gateway(tmp: Path) -> Iterator[Server]:
    """The fast upstream and a gateway with `config` in front of it."""
    with fast_upstream() as url:
        (tmp / "inferplane.yaml").write_text(config(url))
        with running_server(tmp / "data", config=tmp / "inferplane.yaml") as server:
            yield server


def scenario(server: Server, requests: int = 40) -> Figures:
    """Median latency of `requests` chat completions alone, then under the attack."""
    port = int(server.base_url.rsplit(":", 1)[1])
    with server.http() as client:
        _median_ms(client, 10)  # warm: connection, auth cache, upstream pool
        baseline = _median_ms(client, requests)
        command = [sys.executable, __file__, "--attack", str(port)]
        with subprocess.Popen(command, stdin=PIPE, stdout=PIPE, text=True) as attacker:
            assert attacker.stdin is not None and attacker.stdout is not None
            try:
                assert attacker.stdout.readline() == "ready\n", "the attacker did not start"
                time.sleep(SETTLE_S)
                attacked = _median_ms(client, requests)
            finally:
                attacker.stdin.close()  # the floods stop; it reports once its held ones close
                report = attacker.stdout.read()
                attacker.wait(WATCH_S + 30)
    return Figures(baseline, attacked, json.loads(report))


def _median_ms(client: httpx.Client, n: int) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = client.post("/v1/chat/completions", json=CHAT)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return statistics.median(times) * 1000


# -- the attacker (its own process, so that it does not share the timed client's GIL) --


def _connect(port: int, first: bytes) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((ATTACKER, 0))
    sock.connect(("127.0.0.1", port))
    sock.sendall(first)
    return sock


def _status(sock: socket.socket) -> str:
    try:
        return sock.recv(4096)[9:12].decode() or "closed"
    except OSError:
        return "reset"


def _flood(port: int, head: bytes, tail: bytes, stop: threading.Event, seen: Counter) -> None:
    """Send `head`, then `tail` 64 KiB at a time, until refused; again, until `stop`."""
    for _ in range(FLOODS_MAX):
        if stop.wait(FLOOD_EVERY_S):
            return
        try:
            sock = _connect(port, head)
        except OSError:
            seen["not connected"] += 1
            continue
        with sock:
            try:
                for i in range(0, len(tail), 65536):
                    sock.sendall(tail[i : i + 65536])
            except OSError:
                pass  # refused while sending: the answer waits in the socket
            seen[_status(sock)] += 1


def _watch(held: dict[socket.socket, tuple[str, float]], out: dict[str, Any]) -> None:
    """Until each held connection is closed (or WATCH_S): its answer, how long it lived."""
    out.update({kind: {"answers": Counter(), "open_s": 0.0} for kind in HELD})
    answers = {sock: "" for sock in held}
    with selectors.DefaultSelector() as selector:
        for sock in held:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + WATCH_S
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(0.2):
                sock = _as_socket(key.fileobj)
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                answers[sock] = answers[sock] or data[9:12].decode()
                if not data:
                    kind, opened = held[sock]
                    out[kind]["answers"][answers[sock] or "none"] += 1
                    out[kind]["open_s"] = max(out[kind]["open_s"], time.monotonic() - opened)
                    selector.unregister(sock)
        for key in selector.get_map().values():
            out[held[_as_socket(key.fileobj)][0]]["answers"]["still open"] += 1


def _as_socket(obj: object) -> socket.socket:
    assert isinstance(obj, socket.socket)
    return obj


def _attack(port: int) -> None:
    firsts = {
        "idle": b"",
        "half_head": b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n",
        "half_body": b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1000"
        b"\r\ncontent-type: application/json\r\n\r\n{",
    }
    held = {
        _connect(port, firsts[kind]): (kind, time.monotonic())
        for kind, count in HELD.items()
        for _ in range(count)
    }
    report: dict[str, Any] = {}
    watcher = threading.Thread(target=_watch, args=(held, report))
    watcher.start()
    stop = threading.Event()
    huge: Counter = Counter()
    many: Counter = Counter()
    get = b"GET /v1/models HTTP/1.1\r\nhost: x\r\n"
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(10_000)) + b"\r\n"
    floods = [
        threading.Thread(
            target=_flood, args=(port, get + b"x-big: ", b"a" * (10 << 20), stop, huge)
        ),
        threading.Thread(target=_flood, args=(port, get, headers, stop, many)),
    ]
    for thread in floods:
        thread.start()
    print("ready", flush=True)
    sys.stdin.read()  # until the timing is done
    stop.set()
    for thread in [*floods, watcher]:
        thread.join()
    for sock in held:
        sock.close()
    print(json.dumps({"huge_header": huge, "many_headers": many, **report}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--attack", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        _attack(args.attack)
        return
    with tempfile.TemporaryDirectory() as tmp, gateway(Path(tmp)) as server:
        figures = scenario(server, args.requests)
    print(f"baseline      {figures.baseline_ms:7.2f} ms (median of {args.requests})")
    print(f"under attack  {figures.attack_ms:7.2f} ms")
    print(f"ratio         {figures.ratio:7.2f}")
    print(json.dumps(figures.attack, indent=2))


if __name__ == "__main__":
    main()

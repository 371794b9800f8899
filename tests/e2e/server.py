"""Start the real `inferplane serve` in a subprocess on a free port, and stop it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai

START_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[str]
    base_url: str
    data_dir: Path
    admin_key: str | None = None
    output: list[str] = field(default_factory=list)
    clients: list[openai.OpenAI] = field(default_factory=list)

    def client(self, key: str | None = None, **kwargs: object) -> openai.OpenAI:
        """An official openai client (closed when the server stops)."""
        client = openai.OpenAI(
            base_url=self.base_url + "/v1",
            api_key=key or self.admin_key or "",
            max_retries=0,
            **kwargs,  # type: ignore[arg-type]
        )
        self.clients.append(client)
        return client

    def http(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=120)

    def text(self) -> str:
        return "".join(self.output)


def _pump(process: subprocess.Popen[str], sink: list[str]) -> None:
    assert process.stdout is not None
    # The server's end closes the pipe; a closed file here means the helper is done.
    with contextlib.suppress(ValueError, OSError):
        for line in process.stdout:
            sink.append(line)


@contextmanager
def running_server(
    data_dir: Path,
    *,
    admin_key: str | None = "ipk-test-admin",
    config: Path | None = None,
    env: dict[str, str] | None = None,
    cpus: set[int] | None = None,
) -> Iterator[Server]:
    """The real server in a subprocess (`cpus`: pin it, and every thread, to those)."""
    port = free_port()
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERPLANE_")}
    env.update(extra)
    env["INFERPLANE_DATA_DIR"] = str(data_dir)
    if admin_key:
        env["INFERPLANE_ADMIN_KEY"] = admin_key
    cmd = [sys.executable, "-m", "inferplane.cli", "serve", "--port", str(port)]
    if config is not None:
        cmd += ["--config", str(config)]
    process = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    server = Server(process, f"http://127.0.0.1:{port}", data_dir, admin_key)
    pump = threading.Thread(target=_pump, args=(process, server.output), daemon=True)
    pump.start()
    try:
        _wait_ready(server)
        yield server
    finally:
        for client in server.clients:
            client.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        pump.join(10)  # the pipe's EOF ends it once the process is gone
        if process.stdout is not None:
            process.stdout.close()


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited during start-up:\n{server.text()}")
        try:
            if httpx.get(server.base_url + "/readyz", timeout=2).status_code == 200:
                if server.admin_key is None:
                    server.admin_key = printed_admin_key(server.text())
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not ready after {START_TIMEOUT_S} s:\n{server.text()}")


def printed_admin_key(output: str) -> str:
    match = re.search(r"^\s+(ipk-\S+)\s*$", output, re.MULTILINE)
    assert match, f"no admin key printed:\n{output}"
    return match.group(1)


def metric(server: Server, name: str, **labels: str) -> float:
    """Read one sample from /metrics (0 when absent)."""
    body = httpx.get(server.base_url + "/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in body.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return 0.0

"""Real upstream servers for routing tests: llama-cpp-python's own OpenAI-compatible
server (`python -m llama_cpp.server`, the `[server]` extra) on the bundled GGUF, and the
bench's fast upstream (an instant, fixed answer) where what it says does not matter."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.e2e.server import free_port

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def fast_upstream() -> Iterator[str]:
    """`bench/fast_upstream.py` in a subprocess; its OpenAI base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fast_upstream.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/models", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "fast upstream did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class LlamaCppServer:
    gguf: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    # llama-cpp-python's name for the chat format; None: its fallback (llama-2), where
    # this model ends a greedy answer at once.
    chat_format: str | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaCppServer:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(self.gguf),
                "--model_alias",
                "gemma",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--n_ctx",
                "512",
                "--n_threads",
                "1",
                "--interrupt_requests",
                "false",
                *(["--chat_format", self.chat_format] if self.chat_format else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited:\n{self.log_path.read_text()}")
            try:
                if httpx.get(self.url + "/models", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("llama_cpp.server did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def requests_served(self) -> int:
        """Generation requests in the server's own access log."""
        text = self.log_path.read_text(errors="replace")
        return sum(
            1
            for line in text.splitlines()
            if '"POST /v1/chat/completions' in line or '"POST /v1/completions' in line
        )

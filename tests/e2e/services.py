"""Real PostgreSQL and Redis servers for the scale-out tests, in temp dirs on free ports.

PostgreSQL's binaries come from Debian's postgresql-15 package, Redis from redis-server.
initdb refuses to run as root, so under root the server runs as the `postgres` user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol, TypeVar

import sqlalchemy as sa

from inferplane.store.database import normalise_url
from tests.e2e.server import free_port

S = TypeVar("S", bound="_Server")
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


class _Server(Protocol):
    root: Path

    def start(self) -> None: ...
    def stop(self) -> None: ...


@contextmanager
def _running(server: S) -> Iterator[S]:
    """Start a server for the duration of the block; stop it and remove its files after."""
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


def _end(process: subprocess.Popen[bytes]) -> None:
    """Ask a server to stop; kill it if it will not."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_for_logins(url: str, timeout: float = 60) -> None:
    """The port answers before the cluster accepts logins: wait for a real query."""
    engine = sa.create_engine(normalise_url(url))
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
                return
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        engine.dispose()


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PostgresServer:
    """A PostgreSQL 15 cluster in a temp dir on a fixed free port; stoppable, restartable."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="inferplane-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql+asyncpg://inferplane@127.0.0.1:{self.port}/postgres"
        self._process: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            _as_postgres(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(self.data),
                    "-A",
                    "trust",
                    "-U",
                    "inferplane",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        self._process = subprocess.Popen(
            _as_postgres(
                [
                    str(PG_BIN / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.root),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=200",
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, self._process)
        _wait_for_logins(self.url)

    def stop(self) -> None:
        """Fast shutdown (clients are disconnected), through pg_ctl: under root the
        server runs below runuser, which would not pass a signal on."""
        if self._process is None or self._process.poll() is not None:
            return
        subprocess.run(
            _as_postgres(
                [str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w"]
            ),
            capture_output=True,
            timeout=60,
        )
        _end(self._process)


def postgres_server() -> AbstractContextManager[PostgresServer]:
    return _running(PostgresServer())


@contextmanager
def postgres() -> Iterator[str]:
    """Yield the URL of a fresh PostgreSQL 15 cluster."""
    with postgres_server() as server:
        yield server.url


class RedisServer:
    """A redis-server on a fixed free port that a test may stop and start again."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="inferplane-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, self._process)

    def stop(self) -> None:
        if self._process is not None:
            _end(self._process)


def redis_server() -> AbstractContextManager[RedisServer]:
    return _running(RedisServer())


@contextmanager
def redis() -> Iterator[str]:
    with redis_server() as server:
        yield server.url

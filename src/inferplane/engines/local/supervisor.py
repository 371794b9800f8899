"""Start, health-check and restart one worker process per local model.

Lifecycle of a `ManagedWorker`:
  1. spawn `python -m inferplane.engines.worker.main` in its own session (a Ctrl-C meant for
     the gateway must not kill workers before in-flight streams have drained);
  2. connect to its socket until it accepts (the model is loaded by then) and read hello;
  3. watch: the process exiting, or a ping left unanswered for `health_timeout_s`,
     fails the in-flight requests (503) and triggers a restart with backoff (0.5 s,
     doubling, at most 10 s);
  4. stop: close the connection (the worker exits on EOF), then terminate, then kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from inferplane.config import ModelSpec, ServerSettings
from inferplane.engines.local.assets import ModelAsset
from inferplane.engines.local.client import WorkerClient
from inferplane.engines.worker.protocol import decode
from inferplane.errors import Unavailable
from inferplane.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class WorkerStartError(Exception):
    """A worker could not load its model."""


class ManagedWorker:
    def __init__(
        self,
        spec: ModelSpec,
        asset: ModelAsset,
        socket_path: Path,
        server: ServerSettings,
        metrics: Metrics,
    ):
        self.spec = spec
        self.asset = asset
        self.info: dict[str, Any] = {}
        self.pid: int | None = None
        self.restarts = 0
        self._socket_path = socket_path
        self._server = server
        self._metrics = metrics
        self._process: asyncio.subprocess.Process | None = None
        self._client: WorkerClient | None = None
        self._ready = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def start(self) -> None:
        await self._spawn()
        self._tasks = [
            asyncio.create_task(self._watch(), name=f"watch-{self.spec.id}"),
            asyncio.create_task(self._health(), name=f"health-{self.spec.id}"),
        ]

    async def client(self) -> WorkerClient:
        """The live connection; waits up to `worker_wait_s` while the worker restarts."""
        if not self._ready.is_set():
            try:
                async with asyncio.timeout(self._server.worker_wait_s):
                    await self._ready.wait()
            except TimeoutError:
                raise Unavailable(
                    f"The worker for model '{self.spec.id}' is not ready.", retry_after=5
                ) from None
        assert self._client is not None
        return self._client

    async def _spawn(self) -> None:
        self._socket_path.unlink(missing_ok=True)
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "inferplane.engines.worker.main",
            "--socket",
            str(self._socket_path),
            "--model-path",
            str(self.asset.path),
            "--spec",
            self.spec.model_dump_json(),
            start_new_session=True,
        )
        self.pid = self._process.pid
        try:
            reader, writer = await self._connect(self._process)
            hello = decode(await reader.readline())
        except (OSError, ValueError) as exc:
            raise WorkerStartError(f"worker for '{self.spec.id}' failed to start: {exc}") from exc
        self.info = dict(hello.get("info") or {})
        self._client = WorkerClient(
            self.spec.id,
            reader,
            writer,
            max_queue=self.spec.max_queue,
            on_stats=lambda stats: self._metrics.worker_stats(self.spec.id, stats),
        )
        self._ready.set()
        self._metrics.worker_up.labels(self.spec.id).set(1)
        log.info("worker for %s ready (pid %s)", self.spec.id, self.pid)

    async def _connect(
        self, process: asyncio.subprocess.Process
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        deadline = time.monotonic() + self._server.worker_start_timeout_s
        while True:
            if process.returncode is not None:
                raise WorkerStartError(
                    f"worker for '{self.spec.id}' exited with code {process.returncode} "
                    "while loading its model (see the log above)"
                )
            if time.monotonic() > deadline:
                process.kill()
                raise WorkerStartError(f"worker for '{self.spec.id}' did not start in time")
            with contextlib.suppress(OSError):
                return await asyncio.open_unix_connection(str(self._socket_path), limit=1 << 26)
            await asyncio.sleep(0.05)

    async def _watch(self) -> None:
        backoff = 0.5
        while not self._stopping:
            assert self._process is not None
            started = time.monotonic()
            code = await self._process.wait()
            if self._stopping:
                return
            self._mark_down()
            self.restarts += 1
            self._metrics.worker_restarts.labels(self.spec.id).inc()
            log.error("worker for %s exited with code %s; restarting", self.spec.id, code)
            if self._client is not None:
                await self._client.close()
            backoff = 0.5 if time.monotonic() - started > 60 else min(backoff * 2, 10.0)
            await asyncio.sleep(backoff)
            try:
                await self._spawn()
            except WorkerStartError as exc:
                log.error("%s", exc)

    async def _health(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._server.health_interval_s)
            client = self._client
            if not self._ready.is_set() or client is None:
                continue
            try:
                await client.ping(self._server.health_timeout_s)
            except (TimeoutError, Unavailable):
                if self._process is not None and self._process.returncode is None:
                    log.error("worker for %s failed its health check; killing", self.spec.id)
                    self._process.kill()

    def _mark_down(self) -> None:
        self._ready.clear()
        self._metrics.worker_up.labels(self.spec.id).set(0)
        self._metrics.engine_slots_in_use.labels(self.spec.id).set(0)

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._mark_down()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
        process = self._process
        if process is None or process.returncode is not None:
            return
        for sig, wait in ((None, timeout / 2), (signal.SIGTERM, timeout / 2), (signal.SIGKILL, 5)):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)
            try:
                async with asyncio.timeout(wait):
                    await process.wait()
                return
            except TimeoutError:
                continue


class Supervisor:
    """Owns every local model's worker."""

    def __init__(self, server: ServerSettings, metrics: Metrics):
        self._server = server
        self._metrics = metrics
        self._socket_dir = Path(tempfile.mkdtemp(prefix="inferplane-"))
        self.workers: dict[str, ManagedWorker] = {}
        self._spawned = 0  # socket names are never reused

    def add(self, spec: ModelSpec, asset: ModelAsset) -> ManagedWorker:
        """A worker for this model, started with the others by `start`."""
        key, n = spec.id, 1
        while key in self.workers:  # a replacement starting beside the worker it replaces
            n += 1
            key = f"{spec.id}~{n}"
        self._spawned += 1
        worker = ManagedWorker(
            spec, asset, self._socket_dir / f"w{self._spawned}.sock", self._server, self._metrics
        )
        self.workers[key] = worker
        return worker

    async def start_one(self, spec: ModelSpec, asset: ModelAsset) -> ManagedWorker:
        """Add and start a worker while serving (a deployment added or changed at run
        time: the worker it replaces keeps serving its in-flight requests meanwhile)."""
        worker = self.add(spec, asset)
        try:
            await worker.start()
        except BaseException:
            await self.remove(worker)
            raise
        return worker

    async def remove(self, worker: ManagedWorker) -> None:
        """Stop one worker and forget it."""
        for key, held in list(self.workers.items()):
            if held is worker:
                del self.workers[key]
        await worker.stop()

    async def start(self) -> None:
        """Start every worker concurrently; any that fails to load stops start-up."""
        results = await asyncio.gather(
            *(w.start() for w in self.workers.values()), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            raise errors[0]

    @property
    def ready(self) -> bool:
        return bool(self.workers) and all(w.ready for w in self.workers.values())

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers.values()))
        shutil.rmtree(self._socket_dir, ignore_errors=True)

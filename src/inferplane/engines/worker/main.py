"""Worker process entry point: load one model, serve it over a Unix socket, exit on EOF.

    python -m inferplane.engines.worker.main --socket PATH --model-path PATH --spec JSON

The model is loaded before the socket is bound, so a successful connect means "ready".
The socket thread answers pings itself, so a health check works while the engine is busy.
When the gateway's connection closes the worker exits: no orphans.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Protocol

from inferplane.config import ModelSpec
from inferplane.engines.worker import protocol
from inferplane.engines.worker.protocol import Channel, Op


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="inferplane-worker")
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--model-path", required=True, type=Path)
    parser.add_argument("--spec", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="worker %(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    spec = ModelSpec.model_validate_json(args.spec)

    # A Ctrl-C in the terminal is for the gateway, which drains streams before it closes
    # the connection; the worker ends on that EOF.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    engine = _build_engine(spec, args.model_path)  # the slow part: load the model
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    args.socket.unlink(missing_ok=True)
    server.bind(str(args.socket))
    server.listen(1)
    conn, _ = server.accept()
    server.close()
    channel = Channel(conn)
    channel.send({"event": "hello", "info": engine.info(), "pid": os.getpid()})
    threading.Thread(target=_run, args=(engine, channel), name="engine", daemon=True).start()
    for msg in channel.messages():
        op = msg.get("op")
        if op == "ping":
            channel.send({"id": msg.get("id"), "event": "pong"})
        elif op == "cancel":
            engine.cancel(int(msg["id"]))
        else:
            try:
                request = protocol.parse(msg)
            except ValueError as exc:  # a gateway of another version, say
                channel.send(protocol.failed(int(msg.get("id") or 0), str(exc)))
                continue
            engine.submit(int(msg["id"]), request)
    os._exit(0)  # the gateway closed the connection


def _run(engine: Engine, channel: Channel) -> None:
    """The engine's loop. Should it ever fail, the whole worker exits: the supervisor sees
    it, fails the requests in flight (503) and starts a new worker, where a dead engine
    thread alone would leave every request waiting and the worker answering pings."""
    try:
        engine.run(channel)
    except BaseException:
        logging.getLogger(__name__).exception("the engine failed; the worker exits")
    finally:
        os._exit(70)


class Engine(Protocol):
    """What a worker-side engine offers: `run` is its loop, on its own thread."""

    def info(self) -> dict[str, Any]: ...
    def submit(self, rid: int, op: Op) -> None: ...
    def cancel(self, request_id: int) -> None: ...
    def run(self, channel: Channel) -> None: ...


def _build_engine(spec: ModelSpec, path: Path) -> Engine:
    if spec.engine == "llamacpp":
        from inferplane.engines.worker.llamacpp import LlamaCppEngine

        return LlamaCppEngine(spec, path)
    from inferplane.engines.worker.sentence_transformers import EmbeddingEngine

    return EmbeddingEngine(spec, path)


if __name__ == "__main__":
    main()

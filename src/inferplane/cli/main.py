"""`inferplane serve [--config FILE] [--host H] [--port P]`, `keys ...`, `usage report`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from inferplane.cli import keys, usage
from inferplane.config import ConfigError, load_settings
from inferplane.guardrails.policy import configured


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="inferplane")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway and its model workers")
    serve.add_argument("--config", type=Path, help="YAML file naming the models to serve")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.set_defaults(run=_serve)
    keys.register(commands)
    usage.register(commands)
    args = parser.parse_args(argv)
    args.run(args)


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from inferplane.api.app import create_app
    from inferplane.api.http_protocol import gateway_protocol

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings(args.config, host=args.host, port=args.port)
        configured(settings)  # guardrail policies: read now, to stop with the field at fault
    except ConfigError as exc:
        print(f"inferplane: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    config = uvicorn.Config(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        # HTTP-layer limits (head size and time, body time, idle and write timeouts,
        # connections per client), applied before the app; keep-alive is set there too.
        http=gateway_protocol(settings.server.http),
        ws="none",  # no WebSocket routes: an upgrade would escape the limits
        timeout_graceful_shutdown=int(settings.server.shutdown_grace_s),
        access_log=False,
        log_level="info",
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

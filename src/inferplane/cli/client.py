"""A small admin API client for the CLI: the CLI changes state through the running
server, so every change goes through the same validation and snapshot swap."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

import httpx


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("INFERPLANE_URL", "http://127.0.0.1:8080"),
        help="the server (default $INFERPLANE_URL or http://127.0.0.1:8080)",
    )
    parser.add_argument(
        "--admin-key",
        default=os.environ.get("INFERPLANE_ADMIN_KEY"),
        help="an admin key (default $INFERPLANE_ADMIN_KEY)",
    )


def fail(message: str) -> NoReturn:
    print(f"inferplane: {message}", file=sys.stderr)
    raise SystemExit(1)


class AdminClient:
    def __init__(self, args: argparse.Namespace):
        if not args.admin_key:
            fail("an admin key is needed: pass --admin-key or set INFERPLANE_ADMIN_KEY")
        self._url = args.url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {args.admin_key}"}

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = httpx.request(
                method, self._url + path, headers=self._headers, timeout=60, **kwargs
            )
        except httpx.TransportError as exc:
            fail(f"cannot reach {self._url}: {exc}")
        if resp.status_code >= 400:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text
            fail(f"{resp.status_code}: {message}")
        return resp

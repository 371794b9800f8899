"""`inferplane keys ...` and `inferplane usage report` against the running server."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.e2e.server import Server


def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INFERPLANE_URL": server.base_url}
    env["INFERPLANE_ADMIN_KEY"] = server.admin_key or ""
    return subprocess.run(
        [sys.executable, "-m", "inferplane.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keys_create_list_rotate_revoke(server: Server) -> None:
    created = cli(
        server, "keys", "create", "--name", "cli-key", "--rpm", "5", "--models", "gemma-*"
    )
    assert created.returncode == 0, created.stderr
    secret = re.search(r"shown once: (ipk-\S+)", created.stdout)
    key_id = re.search(r'"id": "(key_[0-9a-f]+)"', created.stdout)
    assert secret and key_id
    client = server.client(key=secret.group(1))
    assert [m.id for m in client.models.list()] == ["gemma-3-270m"]

    listed = cli(server, "keys", "list")
    assert listed.returncode == 0 and key_id.group(1) in listed.stdout

    rotated = cli(server, "keys", "rotate", key_id.group(1), "--grace-seconds", "0")
    new_secret = re.search(r"shown once\): (ipk-\S+)", rotated.stdout)
    assert rotated.returncode == 0 and new_secret
    assert server.client(key=new_secret.group(1)).models.list().data

    revoked = cli(server, "keys", "revoke", key_id.group(1))
    assert revoked.returncode == 0
    again = cli(server, "keys", "revoke", "key_nope")
    assert again.returncode == 1 and "404" in again.stderr and "Traceback" not in again.stderr


def test_usage_report(server: Server) -> None:
    server.client().embeddings.create(model="all-minilm-l6-v2", input="report me")
    table = cli(server, "usage", "report", "--group-by", "model")
    assert table.returncode == 0, table.stderr
    assert "all-minilm-l6-v2" in table.stdout and "COST_USD" in table.stdout
    as_csv = cli(server, "usage", "report", "--group-by", "model", "--format", "csv")
    assert as_csv.stdout.startswith("model,requests")
    bad = cli(server, "usage", "report", "--group-by", "planet")
    assert bad.returncode == 1 and "group" in bad.stderr


def test_missing_admin_key_and_unreachable_server(server: Server) -> None:
    env = {k: v for k, v in os.environ.items() if k != "INFERPLANE_ADMIN_KEY"}
    proc = subprocess.run(
        [sys.executable, "-m", "inferplane.cli", "keys", "list", "--url", server.base_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "admin key" in proc.stderr
    down = cli(server, "keys", "list", "--url", "http://127.0.0.1:9")
    assert down.returncode == 1 and "cannot reach" in down.stderr

"""`inferplane keys create|list|revoke|rotate`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from inferplane.cli.client import AdminClient, add_connection_args


def register(commands: Any) -> None:
    keys = commands.add_parser("keys", help="manage API keys")
    sub = keys.add_subparsers(dest="action", required=True)

    create = sub.add_parser("create", help="create a key (its secret is printed once)")
    create.add_argument("--name", required=True)
    create.add_argument("--team-id")
    create.add_argument("--role", choices=["user", "admin"], default="user")
    create.add_argument("--models", help="comma-separated model ids or globs")
    create.add_argument("--rpm", type=int)
    create.add_argument("--tpm", type=int)
    create.add_argument("--max-parallel", type=int)
    create.add_argument("--max-tokens", type=int)
    create.add_argument("--budget-usd", type=float)
    create.add_argument("--budget-period", choices=["day", "week", "month", "total"])
    create.add_argument("--expires-at", help="ISO 8601, e.g. 2027-01-01T00:00:00Z")
    create.add_argument("--priority", choices=["interactive", "batch"])
    create.set_defaults(run=_create)

    listing = sub.add_parser("list", help="list keys")
    listing.add_argument("--team-id")
    listing.set_defaults(run=_list)

    revoke = sub.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_revoke)

    rotate = sub.add_parser("rotate", help="issue a new secret; the old one works for a while")
    rotate.add_argument("key_id")
    rotate.add_argument("--grace-seconds", type=int, default=3600)
    rotate.set_defaults(run=_rotate)

    for parser in (create, listing, revoke, rotate):
        add_connection_args(parser)


def _create(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"name": args.name, "role": args.role}
    if args.team_id:
        body["team_id"] = args.team_id
    if args.models:
        body["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    limits = {
        "rpm": args.rpm,
        "tpm": args.tpm,
        "max_parallel": args.max_parallel,
        "max_tokens": args.max_tokens,
    }
    body["limits"] = {k: v for k, v in limits.items() if v is not None}
    if args.budget_usd is not None:
        body["budget"] = {"usd": args.budget_usd, "period": args.budget_period or "month"}
    if args.expires_at:
        body["expires_at"] = args.expires_at
    if args.priority:
        body["priority"] = args.priority
    created = AdminClient(args).call("POST", "/admin/v1/keys", json=body).json()
    print(json.dumps(created, indent=2))
    print(f"\nThe secret is shown once: {created['key']}")


def _list(args: argparse.Namespace) -> None:
    client = AdminClient(args)
    params: dict[str, Any] = {"limit": 100}
    if args.team_id:
        params["team_id"] = args.team_id
    rows = []
    while True:
        page = client.call("GET", "/admin/v1/keys", params=params).json()
        rows += page["data"]
        if not page["next"]:
            break
        params["after"] = page["next"]
    print(f"{'ID':34} {'NAME':24} {'PREFIX':10} {'ROLE':6} {'TEAM':34} STATE")
    for k in rows:
        state = "revoked" if k["revoked_at"] else "active"
        team = k["team_id"] or "-"
        print(f"{k['id']:34} {k['name'][:24]:24} {k['prefix']:10} {k['role']:6} {team:34} {state}")


def _revoke(args: argparse.Namespace) -> None:
    AdminClient(args).call("DELETE", f"/admin/v1/keys/{args.key_id}")
    print(f"revoked {args.key_id}")


def _rotate(args: argparse.Namespace) -> None:
    body = {"grace_seconds": args.grace_seconds}
    rotated = AdminClient(args).call("POST", f"/admin/v1/keys/{args.key_id}/rotate", json=body)
    secret = rotated.json()["key"]
    print(f"new secret (shown once): {secret}")
    print(f"the old secret keeps working for {args.grace_seconds} s")

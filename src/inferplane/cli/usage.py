"""`inferplane usage report`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from inferplane.cli.client import AdminClient, add_connection_args


def register(commands: Any) -> None:
    usage = commands.add_parser("usage", help="usage and spend")
    sub = usage.add_subparsers(dest="action", required=True)
    report = sub.add_parser("report", help="totals grouped by tenant, model and period")
    report.add_argument(
        "--group-by",
        default="",
        help="e.g. team,model (org team key user model deployment endpoint status)",
    )
    report.add_argument("--from", dest="start", help="ISO 8601 date or time")
    report.add_argument("--to", dest="end", help="ISO 8601 date or time (exclusive)")
    report.add_argument("--granularity", choices=["hour", "day", "month"])
    report.add_argument("--key-id")
    report.add_argument("--team-id")
    report.add_argument("--format", choices=["table", "csv", "json"], default="table")
    add_connection_args(report)
    report.set_defaults(run=_report)


def _report(args: argparse.Namespace) -> None:
    params = {
        "group_by": args.group_by,
        "from": args.start,
        "to": args.end,
        "granularity": args.granularity,
        "key_id": args.key_id,
        "team_id": args.team_id,
        "format": "csv" if args.format == "csv" else "json",
    }
    params = {k: v for k, v in params.items() if v}
    resp = AdminClient(args).call("GET", "/admin/v1/usage", params=params)
    if args.format == "csv":
        print(resp.text, end="")
        return
    rows: list[dict[str, Any]] = resp.json()["data"]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("no usage")
        return
    columns = list(rows[0])
    widths = [max(len(c), *(len(_cell(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(_cell(r[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6f}"
    return "-" if value is None else str(value)

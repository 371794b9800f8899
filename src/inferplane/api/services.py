"""What the routes are built from, reached from a request through one typed accessor."""

from __future__ import annotations

from typing import TypeAlias

from fastapi import Request

from inferplane.runtime import Runtime

# The routes' name for the runtime: its parts (tenancy, inference, routes, ...) are theirs.
Services: TypeAlias = Runtime


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc

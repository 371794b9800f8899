"""The OpenAI generation and embedding routes as plain ASGI, ahead of FastAPI.

Profiled behind a fast upstream (`bench/gateway_overhead.py`), FastAPI's middleware
stack, routing, dependency solving and endpoint wrapper took about a quarter of the
gateway's CPU per non-streaming request. These routes are the data plane's hot path, so
they are dispatched here straight to the same endpoint functions FastAPI registers
(which stay there for the OpenAPI schema), with authentication and the exception
mapping called directly. Every other request goes on to FastAPI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from inferplane.api.auth import authenticate
from inferplane.api.errors import response_for
from inferplane.api.openai.chat_completion.router import create_chat_completion
from inferplane.api.openai.completion.router import create_completion
from inferplane.api.openai.embedding.router import create_embeddings
from inferplane.api.services import services
from inferplane.errors import LoopDetected
from inferplane.tenancy.records import Principal

Endpoint = Callable[[Request, Principal], Awaitable[Response]]


@dataclass(frozen=True)
class _Route:
    """What the gateway middleware's metrics read of a matched route."""

    path: str
    endpoint: Endpoint


_ROUTES = {
    r.path: r
    for r in (
        _Route("/v1/chat/completions", create_chat_completion),
        _Route("/v1/completions", create_completion),
        _Route("/v1/embeddings", create_embeddings),
    )
}


VIA_HEADER = "x-inferplane-via"


def _check_loop(request: Request) -> None:
    """Refuse a request that this installation sent (it would go round again)."""
    mine = services(request).installation_id
    marks = ",".join(request.headers.getlist(VIA_HEADER)).split(",")
    if mine in (m.strip() for m in marks):
        raise LoopDetected()


class DataPlane:
    def __init__(self, app: FastAPI):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app  # as Starlette sets it: services live on the app's state
        scope["route"] = route
        request = Request(scope, receive)
        try:
            if VIA_HEADER in request.headers:
                _check_loop(request)
            principal = await authenticate(request, request.headers.get("authorization"))
            response = await route.endpoint(request, principal)
        except Exception as exc:  # every failure becomes an OpenAI-style answer
            response = response_for(request, exc)
        await response(scope, receive, send)

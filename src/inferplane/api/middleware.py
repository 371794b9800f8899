"""One pure-ASGI middleware for what every request needs (pure ASGI: streams pass through).

- request id: the client's `x-request-id` if it is sane, else a new one;
- body limit: bodies are read up to `max_body_bytes` before the app sees them; beyond
  that the caller gets 413 (whether or not it sent Content-Length); a client that
  disconnects before its body is complete ends the request (the app is not called);
- the request's `Outcome` (`pipeline/context.py`), which the pipeline fills as it runs,
  and the response headers built from it (`api/headers.py`);
- metrics: requests by route/model/status, duration, in-flight.
"""

from __future__ import annotations

import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferplane.api.headers import response_headers
from inferplane.errors import PayloadTooLarge
from inferplane.pipeline.context import Outcome
from inferplane.telemetry.ids import unique_id
from inferplane.telemetry.metrics import Metrics

_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_BODY_METHODS = {"POST", "PUT", "PATCH"}


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        sent_id = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = sent_id if _SANE_ID.match(sent_id) else "req_" + unique_id()
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        # What the pipeline learns of the request, for its response headers and metrics.
        state["outcome"] = outcome = Outcome()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    *response_headers(request_id, outcome),
                ]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            if scope["method"] in _BODY_METHODS:
                try:
                    body = await self._read_body(receive)
                except _ClientLeft:
                    status = 499  # nginx's "client closed request": there is no one to answer
                    return
                if body is None:
                    await self._reject_too_large(send_with_headers)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_with_headers)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            model = outcome.model or ""
            self.metrics.requests.labels(path, model, str(status)).inc()
            self.metrics.request_duration.labels(path, model).observe(time.perf_counter() - started)

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientLeft()  # a truncated body must not be served as a request
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _reject_too_large(self, send: Send) -> None:
        from inferplane.api.errors import error_response

        response = error_response(PayloadTooLarge(self.max_body_bytes))
        response.headers["connection"] = "close"
        await response({"type": "http"}, _no_receive, send)


class _ClientLeft(Exception):
    """The client disconnected before its request body was complete."""


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}

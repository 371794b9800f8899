"""Map every exception to OpenAI's error envelope. No traceback ever reaches a client."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from inferplane.errors import InferplaneError, InvalidRequest
from inferplane.store.errors import StoreUnavailable

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


def error_response(exc: InferplaneError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    # Drop pydantic's union-branch tags ("str", "list[str]", "function-after[...]").
    parts = [p for p in parts if not _union_tag(p)]
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def _union_tag(part: str) -> bool:
    """pydantic's name of a union branch in an error's location, not a field."""
    return (
        ("[" in part and "]" in part)
        or part in {"str", "int", "float"}
        or (part.startswith("constrained-"))
    )


def validation_error(exc: RequestValidationError | ValidationError) -> InvalidRequest:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return InvalidRequest(
            "We could not parse the JSON body of your request. Send valid JSON.",
            code="invalid_json",
        )
    if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
        return InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    param = _param(tuple(first.get("loc", ())))
    msg = str(first.get("msg", "invalid value"))
    text = f"Invalid value for '{param}': {msg}" if param else f"Invalid request: {msg}"
    code = "missing_required_parameter" if first.get("type") == "missing" else "invalid_value"
    return InvalidRequest(text, param=param, code=code)


async def parse_body(request: Request, model: type[M]) -> M:
    """Validate the JSON body against `model`; failures become 400s naming the param.

    Routes parse the body themselves (rather than as a FastAPI body parameter) so that
    authentication runs first: a bad key gets 401 whatever the body holds.
    """
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise validation_error(exc) from None


def response_for(request: Request, exc: Exception) -> JSONResponse:
    """The OpenAI-style answer to any exception a route raised."""
    if isinstance(exc, StoreUnavailable):
        # The driver's error class only: its message may quote a connection string.
        log.warning("request %s: store unavailable: %s", _rid(request), exc.cause)
        return error_response(exc)
    if isinstance(exc, InferplaneError):
        if exc.status >= 500:
            log.warning("request %s: %s", _rid(request), exc.message)
        return error_response(exc)
    if isinstance(exc, RequestValidationError):
        return error_response(validation_error(exc))
    if isinstance(exc, StarletteHTTPException):
        err = InferplaneError(str(exc.detail))
        err.status = exc.status_code
        err.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        err.code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(err.body(), status_code=exc.status_code)
    log.exception("request %s failed", _rid(request), exc_info=exc)
    return error_response(
        InferplaneError(
            f"The server had an error while processing your request (request id {_rid(request)})."
        )
    )


def install_error_handlers(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return response_for(request, exc)

    for kind in (InferplaneError, RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(kind, handle)
    app.add_exception_handler(Exception, handle)


def _rid(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", "-"))

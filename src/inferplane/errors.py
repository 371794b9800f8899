"""The one exception tree of inferplane.

    InferplaneError                      500 api_error          (anything unexpected)
    ├── InvalidRequest                   400 invalid_request_error (carries `param`)
    │   ├── UnsupportedParameter         400 unsupported_parameter (one a model cannot honour)
    │   └── ContextLengthExceeded        400 code=context_length_exceeded
    │       ├── PromptBytesOverContext       (refused by its bytes, before tokenizing)
    │       └── MaxTokensOverContext         400 invalid_value (max_tokens >= the context)
    ├── StartFailed                      400 deployment_start_failed (runtime local deployment)
    ├── AuthenticationFailed             401 invalid_api_key
    ├── PermissionDenied                 403 permission_denied
    │   ├── ModelNotAllowed              403 model_not_allowed
    │   └── NoDeployment                 403 no_eligible_deployment (policy rules left none)
    ├── NotFound                         404 (model_not_found, key_not_found, ...)
    ├── Conflict                         409 conflict (admin: a name taken, a config-file entry)
    ├── PayloadTooLarge                  413 payload_too_large
    ├── Overloaded                       429 queue_full (carries retry_after, queued, max_queued)
    ├── RateLimited                      429 rate_limit_exceeded (carries x-ratelimit-* numbers)
    ├── BudgetExceeded                   429 insufficient_quota
    ├── ClientGone                       499 client_closed_request (the caller left)
    ├── Unavailable                      503 (worker crashed / not ready; carries retry_after)
    ├── DeadlineExceeded                 503 deadline_exceeded (waited past its deadline)
    ├── LoopDetected                     508 loop_detected (a request came back through us)
    └── UpstreamError                    502 upstream_error (a remote deployment failed;
        │                                    carries why, whether another try may help,
        │                                    and the upstream's Retry-After; by reason
        │                                    400 / 429 / 504, see the class)
        └── UpstreamResponseTooLarge     502 upstream_response_too_large (not a health
                                             failure of the deployment)

Each class carries the data of its case; `status`, `type` and `code` map it to HTTP and to
OpenAI's error envelope in one place (`api.errors`). Third-party errors are translated at
the boundary where they occur (`raise Unavailable(...) from exc`).
"""

from __future__ import annotations

import math
from typing import Any


class InferplaneError(Exception):
    status: int = 500
    type: str = "api_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    @property
    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(InferplaneError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_value"


class UnsupportedParameter(InvalidRequest):
    """A parameter, or a value of it (`value`: "above 1"), that the model cannot honour:
    refused by name, never dropped."""

    code = "unsupported_parameter"

    def __init__(self, param: str, value: str | None = None):
        what = f"'{param}' {value}" if value else f"'{param}'"
        super().__init__(
            f"Unsupported parameter: {what} is not supported with this model.", param=param
        )


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"

    def __init__(self, *, prompt_tokens: int, context_size: int, param: str = "messages"):
        super().__init__(
            f"This model's maximum context length is {context_size} tokens, but the request "
            f"has {prompt_tokens} prompt tokens. Shorten the input.",
            param=param,
        )
        self.prompt_tokens = prompt_tokens
        self.context_size = context_size


class AuthenticationFailed(InferplaneError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(InferplaneError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class ModelNotAllowed(PermissionDenied):
    code = "model_not_allowed"

    def __init__(self, model: str):
        super().__init__(f"This API key may not use the model '{model}'.", param="model")
        self.model = model


class NoDeployment(PermissionDenied):
    code = "no_eligible_deployment"

    def __init__(self, model: str):
        super().__init__(
            f"No deployment of the model '{model}' may serve this request under the "
            "routing policy (data class, region or context size)."
        )


class NotFound(InferplaneError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str):
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.",
            param="model",
        )
        self.model = model


class PayloadTooLarge(InferplaneError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"

    def __init__(self, limit_bytes: int):
        super().__init__(f"Request body is larger than the limit of {limit_bytes} bytes.")
        self.limit_bytes = limit_bytes


class LoopDetected(InferplaneError):
    """The request carries this installation's own `x-inferplane-via` mark: a deployment
    points back at the gateway (directly or through other gateways)."""

    status = 508
    type = "invalid_request_error"
    code = "loop_detected"

    def __init__(self) -> None:
        super().__init__(
            "This request has already passed through this gateway: a deployment's base_url "
            "points back at it. Fix the deployment's URL."
        )


class Overloaded(InferplaneError):
    """A bounded queue is full: try again after `retry_after` seconds."""

    status = 429
    type = "rate_limit_error"
    code = "queue_full"

    def __init__(self, *, model: str, queued: int, max_queued: int, retry_after: int = 1):
        super().__init__(
            f"Model '{model}' is overloaded: {queued} requests queued (limit {max_queued}). "
            f"Retry after {retry_after} s."
        )
        self.queued = queued
        self.max_queued = max_queued
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Unavailable(InferplaneError):
    """The backend cannot serve right now (worker crashed, restarting or not ready)."""

    status = 503
    type = "server_error"
    code = "model_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class RateLimited(InferplaneError):
    """A rate limit (requests, tokens or concurrency) refused the request.

    Carries the numbers of the limit that refused it; `headers` adds OpenAI's
    `x-ratelimit-*` set and `Retry-After` (when the request would fit again).
    """

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        ratelimit_headers: dict[str, str],
        code: str | None = None,
    ):
        super().__init__(message, code=code)
        self.retry_after = retry_after
        self.ratelimit_headers = ratelimit_headers

    @property
    def headers(self) -> dict[str, str]:
        return {**self.ratelimit_headers, "Retry-After": str(max(1, math.ceil(self.retry_after)))}


class UpstreamError(InferplaneError):
    """A remote deployment failed an attempt. `reason` says how: server_error, timeout,
    connection, rate_limited, context_length, content_filter, invalid (the request itself
    was refused: no other deployment would do better), or stream (broken mid-stream).

    When it is the request's last word, the caller gets what the reason means for them:
    the request's own fault as 400 (code context_length_exceeded, content_filter or
    invalid_request), 429 upstream_rate_limited with the upstream's Retry-After, 504
    upstream_timeout, otherwise 502 upstream_error."""

    status = 502
    type = "server_error"
    code = "upstream_error"

    _BY_REASON = {
        "invalid": (400, "invalid_request_error", "invalid_request"),
        "context_length": (400, "invalid_request_error", "context_length_exceeded"),
        "content_filter": (400, "invalid_request_error", "content_filter"),
        "rate_limited": (429, "rate_limit_error", "upstream_rate_limited"),
        "timeout": (504, "server_error", "upstream_timeout"),
        "too_large": (502, "server_error", "upstream_response_too_large"),
    }

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        upstream_status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.reason = reason
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        if reason in self._BY_REASON:
            self.status, self.type, self.code = self._BY_REASON[reason]

    @property
    def headers(self) -> dict[str, str]:
        if self.status == 429 and self.retry_after is not None:
            return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}
        return {}

    @property
    def retryable(self) -> bool:
        """Whether the same or another deployment may succeed."""
        return self.reason != "invalid"

    @property
    def same_deployment_may_succeed(self) -> bool:
        """False where only another deployment can help (too long, filtered)."""
        return self.reason not in ("invalid", "context_length", "content_filter")


class MaxTokensOverContext(ContextLengthExceeded):
    """`max_tokens` asks for the model's whole context or more: no prompt leaves room.
    A ContextLengthExceeded, so that an alias's other deployments may still serve the
    request; `prompt_tokens` is 0 (refused before the prompt was tokenized)."""

    code = "invalid_value"

    def __init__(self, *, max_tokens: int, context_size: int):
        InvalidRequest.__init__(
            self,
            f"max_tokens is {max_tokens}, but this model's context holds {context_size} "
            "tokens in all, prompt and completion. Lower max_tokens.",
            param="max_tokens",
        )
        self.max_tokens = max_tokens
        self.prompt_tokens = 0
        self.context_size = context_size


class PromptBytesOverContext(ContextLengthExceeded):
    """A prompt refused before it was tokenized: its bytes alone need more tokens than the
    context holds, no token of the model standing for more than a few dozen bytes.
    `prompt_tokens` is that lower bound."""

    def __init__(self, *, prompt_tokens: int, prompt_bytes: int, context_size: int, param: str):
        InvalidRequest.__init__(
            self,
            f"This model's maximum context length is {context_size} tokens, but the request "
            f"has at least {prompt_tokens} prompt tokens ({prompt_bytes} bytes). "
            "Shorten the input.",
            param=param,
        )
        self.prompt_tokens = prompt_tokens
        self.prompt_bytes = prompt_bytes
        self.context_size = context_size


class UpstreamResponseTooLarge(UpstreamError):
    """A remote deployment's answer ran past its `max_response_bytes` (a whole body, or
    all of one stream). Not a mark against the deployment's health, and not worth
    asking it again; another deployment may answer within bounds."""

    def __init__(self, deployment: str, limit_bytes: int):
        super().__init__(
            f"Deployment '{deployment}' answered more than {limit_bytes} bytes.",
            reason="too_large",
        )
        self.limit_bytes = limit_bytes

    @property
    def same_deployment_may_succeed(self) -> bool:
        return False


class BudgetExceeded(InferplaneError):
    """A key's or team's budget has no room for the request's worst-case cost."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class DeadlineExceeded(InferplaneError):
    """The request's deadline passed while it waited for a model's queue."""

    status = 503
    type = "server_error"
    code = "deadline_exceeded"

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class Conflict(InferplaneError):
    """An admin change collides with what exists (a name taken, a config-file entry)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class StartFailed(InferplaneError):
    """A local deployment added at run time could not start its worker."""

    status = 400
    type = "invalid_request_error"
    code = "deployment_start_failed"


class ClientGone(InferplaneError):
    """The caller disconnected before a non-streaming answer was ready (nginx's 499)."""

    status = 499
    code = "client_closed_request"

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the answer was ready.")

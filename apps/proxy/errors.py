"""OpenAI-shaped errors for the /v1 API.

Statuses and `type` values follow OpenAI's API so the official SDK raises the class a user
expects (BadRequestError, AuthenticationError, PermissionDeniedError, NotFoundError, ...).
"""

from typing import Any

import orjson


class GatewayError(Exception):
    status = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> bytes:
        error = {
            "message": self.message,
            "type": self.error_type,
            "param": self.param,
            "code": self.code,
        }
        error.update(self.extra)
        return orjson.dumps({"error": error})


class BadRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class Unauthorized(GatewayError):
    status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    error_type = "invalid_request_error"
    code = "model_not_allowed"


class NotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"


class UpstreamError(GatewayError):
    """Every deployment failed; status is 502, 503 or 504 by the last failure's kind."""

    status = 502
    error_type = "upstream_error"
    code = "upstream_error"

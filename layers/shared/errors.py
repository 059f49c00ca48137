"""The error model of the public API: every domain error has a code, a sentence and a status.

Domain code raises these; one place (`functions.http_api.app`) turns them into responses.
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    status = 500
    code = "internal_error"
    default_message = "Something went wrong on our side."

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.headers = headers or {}
        # Machine-readable detail a protocol asks for (A2A's google.rpc.ErrorInfo), beside our code and message.
        self.details: list[dict[str, Any]] = []

    def body(self) -> dict[str, Any]:
        body = error_body(self.code, self.message)
        if self.details:
            body["error"]["details"] = self.details
        return body


class ValidationFailed(AppError):
    status, code, default_message = 400, "validation_error", "The request is not valid."


class NotAuthenticated(AppError):
    status, code, default_message = 401, "not_authenticated", "Sign in first."


class Forbidden(AppError):
    status, code, default_message = 403, "forbidden", "You are not allowed to do that."


class NotFound(AppError):
    status, code, default_message = 404, "not_found", "Nothing was found there."


class Conflict(AppError):
    status, code, default_message = 409, "conflict", "That conflicts with the current state."


class PayloadTooLarge(AppError):
    status, code, default_message = 413, "payload_too_large", "The request body is too large."


class RateLimited(AppError):
    status, code, default_message = 429, "rate_limited", "Too many requests; try again later."

    def __init__(self, message: str | None = None, *, retry_after_seconds: int):
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_seconds))})


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


# Framework-level statuses (routing, method, validation) that are not raised as AppError.
STATUS_CODES: dict[int, tuple[str, str]] = {
    400: ("validation_error", "The request is not valid."),
    401: ("not_authenticated", "Sign in first."),
    403: ("forbidden", "You are not allowed to do that."),
    404: ("not_found", "Nothing was found there."),
    405: ("method_not_allowed", "That method is not allowed here."),
    409: ("conflict", "That conflicts with the current state."),
    413: ("payload_too_large", "The request body is too large."),
    415: ("unsupported_media_type", "Send JSON."),
    429: ("rate_limited", "Too many requests; try again later."),
}


def error_for_status(status: int) -> dict[str, Any]:
    code, message = STATUS_CODES.get(status, ("internal_error", "Something went wrong on our side."))
    return error_body(code, message)

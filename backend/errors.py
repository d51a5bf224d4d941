"""Domain errors, mapped once to HTTP responses: routes raise these and never build error replies."""

from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException


class DomainError(Exception):
    """An error a client can act on; `status` is its HTTP status, `code` a stable name."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class InvalidInput(DomainError):
    status = 422
    code = "invalid_input"


class PayloadTooLarge(DomainError):
    status = 413
    code = "payload_too_large"


class Unauthorized(DomainError):
    status = 401
    code = "unauthorized"


class LimitExceeded(DomainError):
    """A per-user quota (active jobs, storage) is used up; the message says how to free some."""

    status = 429
    code = "limit_exceeded"


class StorageFailed(DomainError):
    """The server could not write a file (full disk, quota, I/O error); nothing was kept."""

    status = 507
    code = "storage_error"


# Codes for the HTTP errors Starlette raises itself (unknown route, wrong method, unreadable body).
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def invalid_field(loc: Sequence[str | int], message: str) -> InvalidInput:
    """A pydantic error (its location and message) as an InvalidInput naming the dotted field."""
    field = ".".join(str(part) for part in loc)
    message = message.removeprefix("Value error, ")
    return InvalidInput(f"{field}: {message}" if field else message, field or None)


def error_body(code: str, message: str, field: str | None = None) -> dict:
    error = {"code": code, "message": message}
    if field:
        error["field"] = field
    return {"error": error}


async def _domain_error_handler(_request: Request, exc: DomainError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(error_body(exc.code, exc.message, exc.field), status_code=exc.status, headers=headers)


async def _request_validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own 422s in our error shape, naming the first bad field (without body/query/path)."""
    error = exc.errors()[0]
    return await _domain_error_handler(request, invalid_field(error["loc"][1:], error["msg"]))


async def _http_error_handler(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own HTTP errors in our error shape, keeping their headers (Allow, ...)."""
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error_handler)
    app.add_exception_handler(HTTPException, _http_error_handler)
    app.add_exception_handler(RequestValidationError, _request_validation_handler)

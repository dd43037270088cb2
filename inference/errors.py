"""The one place where failures become OpenAI-style error responses.

Every error the API returns has the body {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """An error with an HTTP status that the client should see as is."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}


def invalid_request(message: str, code: str = "invalid_request", param: str | None = None) -> APIError:
    return APIError(400, message, code=code, param=param)


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    error_type = _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(
    status: int, message: str, code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, param), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.code, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = describe_validation_error(exc.errors())
        return error_response(400, message, code, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
        return error_response(exc.status_code, str(exc.detail), code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error while serving a request")
        return error_response(500, "internal server error", "internal_error")


# Validation errors raised by protocol.py with their own code; their context names the parameter.
_OWN_CODES = ("unsupported_parameter", "invalid_unicode")


def describe_validation_error(errors: list[dict]) -> tuple[str, str | None, str]:
    """One readable sentence for the first problem, the parameter it concerns, and the error code."""
    first = errors[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None, "invalid_request"
    if first.get("type") in _OWN_CODES:
        return first.get("msg", "invalid value"), (first.get("ctx") or {}).get("param"), first["type"]
    if not location and first.get("type") in ("missing", "model_attributes_type", "dict_type"):
        return "the request body must be a JSON object", None, "invalid_request"
    param = ".".join(location) or None
    message = first.get("msg", "invalid value")
    return (f"{param}: {message}" if param else message), param, "invalid_request"

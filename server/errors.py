"""Every error leaves the service as OpenAI-style JSON, {"error": {"message", "type", "param", "code"}}:
the `APIError` exception and the handlers that render it (and FastAPI's own errors) in that shape.
"""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from vocoder.errors import VocoderError

logger = logging.getLogger(__name__)

ERROR_TYPES = {
    404: "not_found_error",
    405: "invalid_request_error",
    500: "server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


class APIError(HTTPException):
    """An error with a status and a message for the client.

    A subclass of Starlette's HTTPException so that FastAPI's body parsing passes it through
    unchanged instead of replacing it with a generic 400.
    """

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.message = message
        self.code = code
        self.param = param


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error_body(error.status_code, error.message, error.code, error.param),
                        status_code=error.status_code, headers=error.headers)


def _param_name(location: tuple[Any, ...]) -> str | None:
    # ("query", "sigma") -> "sigma"; ("body", "mel", 3) -> "mel.3"
    parts = [str(part) for part in location if part not in ("query", "body", "header", "path")]
    return ".".join(parts) or None


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One readable line (and the parameter it concerns) for pydantic's error list."""
    first = errors[0]
    param = _param_name(tuple(first.get("loc", ())))
    message = first.get("msg", "invalid request")
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return message, param


async def _handle_http_error(request: Request, error: HTTPException) -> JSONResponse:
    if isinstance(error, APIError):
        return error_response(error)
    return error_response(APIError(error.status_code, str(error.detail), headers=error.headers))


async def _handle_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    message, param = validation_message(list(error.errors()))
    return error_response(APIError(422, message, code="invalid_parameter", param=param))


async def _handle_vocoder_error(request: Request, error: VocoderError) -> JSONResponse:
    return error_response(APIError(422, str(error), code="invalid_input"))


def client_disconnected() -> APIError:
    # 499 is nginx's "client closed request": no client reads it, but metrics count it apart from 5xx.
    return APIError(499, "the client closed the request", code="client_disconnected")


async def _handle_client_disconnect(request: Request, error: ClientDisconnect) -> JSONResponse:
    # The client's doing, not a fault here: one quiet line, no traceback.
    logger.debug("client disconnected during %s %s", request.method, request.url.path)
    return error_response(client_disconnected())


async def _handle_unexpected(request: Request, error: Exception) -> JSONResponse:
    # The traceback goes to the log only; the client learns nothing about the internals.
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return error_response(APIError(500, "internal server error", code="internal_error"))


def install_error_handlers(app: FastAPI) -> None:
    """Render HTTP, validation, library and unexpected errors in the one JSON error shape, and
    count a client that left mid-request as 499."""
    app.add_exception_handler(HTTPException, _handle_http_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(VocoderError, _handle_vocoder_error)
    app.add_exception_handler(ClientDisconnect, _handle_client_disconnect)
    app.add_exception_handler(Exception, _handle_unexpected)

"""One JSON error shape for every response: ``{"error": {"code", "message", "detail"}}``."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    code: str
    message: str
    detail: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class APIError(Exception):
    def __init__(
        self, status_code: int, code: str, message: str, detail: Any = None, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code, self.code, self.message, self.detail = status_code, code, message, detail
        self.headers = headers


def not_found(kind: str, id_: str) -> APIError:
    return APIError(404, f"{kind}_not_found", f"{kind} {id_!r} does not exist")


def field_error(field: str, message: str, value: Any = None) -> APIError:
    """A 422 for a body field that validates alone but not against the database or catalog."""
    detail = [{"loc": ["body", field], "msg": message, "type": "value_error", "input": value}]
    return APIError(422, "validation_error", f"body.{field}: {message}", detail)


def error_response(
    status_code: int, code: str, message: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, detail=jsonable_encoder(detail)))
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)



_PLAIN = (str, int, float, bool, type(None), list, dict)


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        message = "; ".join(f"{_loc(e['loc'])}: {e['msg']}" for e in errors[:5])
        detail = [
            {k: v for k, v in e.items() if k in ("loc", "msg", "type")}
            | ({"input": e["input"]} if isinstance(e.get("input"), _PLAIN) else {})
            for e in errors
        ]
        return error_response(422, "validation_error", message or "invalid request", detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        phrase = HTTPStatus(exc.status_code).phrase
        code = phrase.lower().replace(" ", "_").replace("-", "_")
        if exc.status_code == 413:
            code = "upload_too_large"
        message = exc.detail if isinstance(exc.detail, str) else phrase
        return error_response(exc.status_code, code, message, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error", type(exc).__name__)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": HTTPStatus(code).phrase}
    for code in (400, 401, 403, 404, 409, 413, 422, 503)
}

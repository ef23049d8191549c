"""Every error as RFC 9457 problem details (application/problem+json), never a bare 500 for bad input."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from workers.store import STORE_UNAVAILABLE, StoreFull

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"


class ApiError(Exception):
    """An error answer: status, a short code and a detail that says what to change."""

    def __init__(self, status: int, detail: str, *, code: str | None = None, headers: dict[str, str] | None = None,
                 errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.code, self.headers, self.errors = status, detail, code, headers, errors


def problem_response(request: Request | None, status: int, detail: str, *, code: str | None = None,
                     headers: dict[str, str] | None = None, errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
                            "detail": detail}
    if request is not None:
        body["instance"] = request.url.path
    if code:
        body["code"] = code
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def _field(loc: tuple | list) -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-")]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] if parts[0] == "body" else parts
    return ".".join(parts) or "(body)"


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    raw = exc.errors()
    if any(e.get("type") == "json_invalid" for e in raw):
        return problem_response(request, 400, "the request body is not valid JSON", code="invalid_json")
    errors = [{"field": _field(e.get("loc", ())), "message": e.get("msg", "invalid")} for e in raw[:20]]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:3])
    more = f" (+{len(raw) - 3} more)" if len(raw) > 3 else ""
    return problem_response(request, 422, summary + more, code="invalid_request", errors=errors)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return problem_response(request, exc.status, exc.detail, code=exc.code, headers=exc.headers, errors=exc.errors)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.method} {request.url.path}; see /docs"
    return problem_response(request, exc.status_code, detail, headers=getattr(exc, "headers", None))


async def _store_full(request: Request, exc: Exception) -> JSONResponse:
    log.error("redis refuses writes (maxmemory reached): %s", exc)
    return problem_response(request, 503, "the service's storage is full; finished jobs free it as their retention "
                                          "ends, retry later", code="storage_full", headers={"Retry-After": "60"})


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unavailable on %s %s: %s", request.method, request.url.path, exc)
    return problem_response(request, 503, "the job store cannot be reached right now; retry shortly",
                            code="store_unavailable", headers={"Retry-After": "5"})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(request, 500, "internal error; the server log has the details", code="internal")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(StoreFull, _store_full)
    for kind in STORE_UNAVAILABLE:
        app.add_exception_handler(kind, _store_unavailable)
    app.add_exception_handler(Exception, _unexpected)

"""``create_app``: one FastAPI application, the REST API plus the reviewer/operator console.

The lifespan opens the Codara :class:`~codara.engine.Client` (``codara serve``: the store URL
only, no workflow code) or :class:`~codara.engine.App` (embedded use, tests) and closes it. Errors
become ``{"error": {"code", "message", "hint"}}`` with the Codara error's HTTP status on API
paths, and an HTML page on console paths.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from codara import console
from codara.api._auth import AuthMiddleware, codara_app, error_body, is_api_path
from codara.api._headers import SecurityHeadersMiddleware
from codara.api._routes import router
from codara.engine import App, Client
from codara.errors import CodaraError, InputError, StoreError

__all__ = ["create_app"]

log = logging.getLogger("codara.api")

_HTTP_CODES = {401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "not_allowed"}


def _problems(errors: list[Any]) -> str:
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


async def _codara_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CodaraError)
    if exc.http_status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    if not is_api_path(request.url.path):
        return console.error_page(request, exc.http_status, exc.message, exc.hint)
    return JSONResponse(error_body(exc), status_code=exc.http_status)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    error = InputError(
        f"invalid request: {_problems(errors)}", hint="see the API's schema at /openapi.json"
    )
    if not is_api_path(request.url.path):
        return console.error_page(request, 422, error.message, None)
    body = {**error_body(error), "detail": jsonable_encoder(errors)}
    return JSONResponse(body, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail) if exc.detail else "request refused"
    if not is_api_path(request.url.path):
        response: Response = console.error_page(request, exc.status_code, message, None)
    else:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": message, "hint": None}}
        response = JSONResponse(body, status_code=exc.status_code)
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def _openapi(request: Request) -> JSONResponse:
    """The OpenAPI document (signed-in callers only, like every other route)."""
    return JSONResponse(request.app.openapi())


async def _healthz(request: Request) -> JSONResponse:
    """Liveness and database reachability, for load balancers (no sign-in)."""
    try:
        await codara_app(request).store.execute_raw("SELECT 1")
    except StoreError as exc:  # e.g. StoreUnavailableError: answered within the pool timeout
        return JSONResponse(error_body(exc), status_code=503)
    except Exception as exc:  # any other driver error: report it, do not crash the probe
        error = StoreError(f"the database does not answer: {type(exc).__name__}")
        return JSONResponse(error_body(error), status_code=503)
    return JSONResponse({"status": "ok"})


def create_app(app: App | Client) -> FastAPI:
    """The web application serving ``app``'s store: REST API under /api, console at /.

    The routes use only what :class:`~codara.engine.Client` offers (the store, the clock,
    start_run, get_run, journal, cancel, send_signal), so a Client is enough: ``codara
    serve`` passes one and needs no workflow code.
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await app.open()
        try:
            yield
        finally:
            await app.close()

    api = FastAPI(
        title="Codara",
        summary="Durable AI workflows with human review: runs, review queues, signals.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # the Swagger UI would load from a CDN; the spec is at /openapi.json
        redoc_url=None,
        openapi_url=None,  # served below, behind authentication
    )
    api.state.codara = app
    api.add_middleware(AuthMiddleware)
    api.add_middleware(SecurityHeadersMiddleware)  # outermost: on every response
    api.add_exception_handler(CodaraError, _codara_error)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(StarletteHTTPException, _http_error)
    api.add_api_route("/openapi.json", _openapi, methods=["GET"], include_in_schema=False)
    api.add_api_route("/healthz", _healthz, methods=["GET"], include_in_schema=False)
    api.include_router(router)
    console.install(api)
    return api

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
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from codara import console
from codara.api._auth import AuthMiddleware, codara_app, error_body, is_api_path
from codara.api._headers import SecurityHeadersMiddleware
from codara.api._routes import check_json_body, router
from codara.engine import App, Client
from codara.errors import CodaraError, InputError, PayloadTooLargeError, StoreError
from codara.review import reveal_rules

__all__ = ["create_app"]

log = logging.getLogger("codara.api")

_HTTP_CODES = {401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "not_allowed"}


def _safe(text: object) -> str:
    """``text`` as a string JSON and HTML can carry (lone surrogates escaped)."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def _detail(errors: list[Any]) -> list[dict[str, Any]]:
    """Validation errors without the raw input (it may be what cannot be encoded)."""
    return [
        {
            "type": _safe(e.get("type", "invalid")),
            "loc": [p if isinstance(p, int) else _safe(p) for p in e.get("loc", ())],
            "msg": _safe(e.get("msg", "invalid")),
        }
        for e in errors
    ]


def _problems(errors: list[Any]) -> str:
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e["loc"] if p != "body") or "request"
        parts.append(f"{where}: {e['msg']}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


async def _codara_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CodaraError)
    if exc.http_status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    message, hint = _safe(exc.message), None if exc.hint is None else _safe(exc.hint)
    if not is_api_path(request.url.path):
        return console.error_page(request, exc.http_status, message, hint)
    body = {"error": {"code": exc.code, "message": message, "hint": hint}}
    return JSONResponse(body, status_code=exc.http_status)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = _detail(list(exc.errors()))
    error = InputError(
        f"invalid request: {_problems(errors)}", hint="see the API's schema at /openapi.json"
    )
    if not is_api_path(request.url.path):
        return console.error_page(request, 422, error.message, None)
    body = {**error_body(error), "detail": errors}
    return JSONResponse(body, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = _safe(exc.detail) if exc.detail else "request refused"
    if not is_api_path(request.url.path):
        response: Response = console.error_page(request, exc.status_code, message, None)
    else:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": message, "hint": None}}
        response = JSONResponse(body, status_code=exc.status_code)
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _is_json(content_type: str) -> bool:
    """FastAPI reads a body as JSON without a content type, or with a JSON one."""
    main = content_type.split(";", 1)[0].strip().lower()
    return not main or main == "application/json" or main.endswith("+json")


class BodyLimitMiddleware:
    """Refuses a request body over ``max_body_bytes`` with 413 (by its Content-Length, or by
    counting a chunked body as it arrives, without reading the rest), and a JSON body that is
    not strict UTF-8 JSON (lone surrogates, non-finite numbers, deep nesting) with 422, before
    any route runs, so such a request writes nothing."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = self.max_body_bytes
        length = headers.get("content-length", "")
        if length.strip().isdigit() and int(length) > limit:
            await self._refuse(scope, receive, send, self._too_large(int(length)))
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(scope, receive, send, self._too_large(None))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body and _is_json(headers.get("content-type", "")):
            try:
                check_json_body(body)
            except InputError as exc:
                await self._refuse(scope, receive, send, exc)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _too_large(self, length: int | None) -> PayloadTooLargeError:
        size = f"{length} bytes" if length is not None else "more than the limit"
        return PayloadTooLargeError(
            f"the request body is {size}; the limit is {self.max_body_bytes} bytes",
            hint="send less (a reference instead of the data), or raise [server] max_body_bytes",
        )

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, exc: CodaraError) -> None:
        request = Request(scope, receive)
        response = await _codara_error(request, exc)
        response.headers["connection"] = "close"  # the rest of the body is not read
        await response(scope, receive, send)


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


def create_app(app: App | Client, *, max_body_bytes: int | None = None) -> FastAPI:
    """The web application serving ``app``'s store: REST API under /api, console at /.

    ``max_body_bytes`` (default: ``[server] max_body_bytes`` of the app's settings) caps a
    request body; a bigger one is answered 413. ``[server] trusted_proxies`` says whose
    ``X-Forwarded-For`` gives the client's address (uvicorn's ``ProxyHeadersMiddleware``).

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
    reveal_rules(app.settings)  # a broken [privacy] stops the server at start, not a request
    api.state.codara = app
    api.add_middleware(AuthMiddleware)
    limit = max_body_bytes if max_body_bytes is not None else app.settings.server.max_body_bytes
    api.add_middleware(BodyLimitMiddleware, max_body_bytes=limit)
    api.add_middleware(SecurityHeadersMiddleware)  # on every response
    proxies = [p.strip() for p in app.settings.server.trusted_proxies.split(",") if p.strip()]
    if proxies:  # outermost: the client's address as a trusted proxy forwarded it
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        api.add_middleware(ProxyHeadersMiddleware, trusted_hosts=proxies)
    api.add_exception_handler(CodaraError, _codara_error)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(StarletteHTTPException, _http_error)
    api.add_api_route("/openapi.json", _openapi, methods=["GET"], include_in_schema=False)
    api.add_api_route("/healthz", _healthz, methods=["GET"], include_in_schema=False)
    api.include_router(router)
    console.install(api)
    return api

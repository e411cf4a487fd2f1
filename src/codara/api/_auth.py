"""Authentication from the first route: a middleware in front of everything, and the
dependencies routes declare to get the caller and to demand roles.

Deny by default: every path except :data:`PUBLIC_PATHS` and the static files needs a valid
token or console session, before routing, before the body is read, even for a path that does
not exist. API paths answer 401 with a JSON error; a console page asked for with GET is
redirected to ``/login`` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from codara.auth import Users
from codara.auth._web import (
    CSRF_HEADER,
    SAFE_METHODS,
    SCOPE_KEY,
    SESSION_COOKIE,
    WebIdentity,
    check_csrf,
    identify,
    identity_in,
)
from codara.engine import App
from codara.errors import CodaraError
from codara.review import ForbiddenError, Principal

__all__ = [
    "ADMIN",
    "OPERATOR",
    "PUBLIC_PATHS",
    "AuthMiddleware",
    "codara_app",
    "current_identity",
    "current_principal",
    "error_body",
    "is_api_path",
    "is_public",
    "require",
]

PUBLIC_PATHS = frozenset({"/healthz", "/login"})
PUBLIC_PREFIXES = ("/static/",)

_bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="cdr_...",
    description="An API token from `codara tokens create USER` (or a console session cookie "
    "with an X-CSRF-Token header on requests that change something).",
)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def is_api_path(path: str) -> bool:
    """Paths that answer JSON (the rest is the console, which answers HTML)."""
    return path.startswith("/api/") or path in ("/api", "/openapi.json", "/healthz")


def codara_app(request: Request) -> App:
    app: App = request.app.state.codara
    return app


def error_body(exc: CodaraError) -> dict[str, dict[str, str | None]]:
    return {"error": exc.to_dict()}


def _refusal(scope: Scope, exc: CodaraError, had_cookie: bool) -> Response:
    path: str = scope["path"]
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    response: Response
    if exc.http_status != 401 or is_api_path(path):
        response = JSONResponse(error_body(exc), status_code=exc.http_status)
        if exc.http_status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="codara"'
    elif headers.get("hx-request"):  # htmx: have the browser go to the login page
        response = Response(status_code=401, headers={"HX-Redirect": "/login"})
    elif scope["method"] in ("GET", "HEAD"):
        query = scope.get("query_string", b"").decode("latin-1")
        target = path + (f"?{query}" if query else "")
        response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    else:
        response = JSONResponse(error_body(exc), status_code=401)
    if had_cookie:  # an expired or revoked session: forget it
        response.delete_cookie(SESSION_COOKIE, path="/")
    return response


class AuthMiddleware:
    """Authenticate every non-public request and keep the result in the ASGI scope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        cookie = request.cookies.get(SESSION_COOKIE)
        try:
            app = codara_app(request)
            identity = await identify(
                Users(app.store, app.clock),
                authorization=request.headers.get("authorization"),
                cookie=cookie,
            )
        except CodaraError as exc:
            await _refusal(scope, exc, bool(cookie))(scope, receive, send)
            return
        scope[SCOPE_KEY] = identity
        await self.app(scope, receive, send)


def current_identity(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> WebIdentity:
    """The caller. A request that changes something with the session cookie needs the CSRF
    header (the console's forms are checked by the console itself)."""
    identity = identity_in(request.scope)
    if request.method not in SAFE_METHODS and is_api_path(request.url.path):
        check_csrf(identity, request.headers.get(CSRF_HEADER))
    return identity


def current_principal(identity: Annotated[WebIdentity, Depends(current_identity)]) -> Principal:
    return identity.principal


def require(*roles: str) -> Callable[[Principal], Principal]:
    """A dependency that lets through callers holding any of ``roles`` (403 otherwise)."""
    wanted = frozenset(roles)
    if not wanted:
        raise ValueError("require() needs at least one role")

    def dependency(who: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not who.roles & wanted:
            raise ForbiddenError(
                f"{who.username} may not do this: it needs role {' or '.join(sorted(wanted))}",
                hint="ask an admin to grant the role (codara users add NAME --role ...)",
            )
        return who

    return dependency


OPERATOR = require("operator", "admin")
ADMIN = require("admin")

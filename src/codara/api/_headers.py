"""``SecurityHeadersMiddleware``: the browser-facing security headers on every response.

* ``Content-Security-Policy``: scripts, styles and everything else from this origin only (no
  inline code: the console's scripts and styles are files under ``/static``), no plugins, no
  ``<base>``, forms post to this origin only, and ``frame-ancestors 'none'``: no page of any
  other origin (another port on the same host included) can frame the console and trick a
  signed-in reviewer into a click.
* ``X-Frame-Options: DENY`` for browsers that predate ``frame-ancestors``.
* ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: same-origin``: ids in URLs never
  leave the site, and same-origin form posts keep their Origin, which the login check
  needs (with ``no-referrer`` browsers send ``Origin: null``).
* ``Allow`` on a 405 under the API: every method its OpenAPI document lists for the path.
* ``Cache-Control: no-store`` on every response but the static files: API bodies and console
  pages carry case data (proposals, customers, decisions) that must not stay in a browser's or
  a proxy's cache after sign-out.
"""

from __future__ import annotations

import re

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CSP", "SecurityHeadersMiddleware"]

CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    )
)
_ALWAYS = (
    ("Content-Security-Policy", CSP),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
)
_CACHEABLE_PREFIXES = ("/static/",)


_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def _allowed(scope: Scope) -> str | None:
    """Every method the OpenAPI document lists for the most literal path template that this
    request's path matches, or None off the API. (Starlette's own ``Allow`` names only the first
    route of the path that matched: GET of GET and POST /api/runs.)"""
    openapi = getattr(scope.get("app"), "openapi", None)
    if openapi is None:
        return None
    path = str(scope.get("path", ""))
    by_placeholders: dict[int, set[str]] = {}
    for template, operations in openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\\{[^/}]+\\}", "[^/]+", re.escape(template)), path):
            # the most literal template names the resource: /reviews/bulk-approve, not /{id}
            methods = by_placeholders.setdefault(template.count("{"), set())
            methods |= {m.upper() for m in operations if m in _METHODS}
    if not by_placeholders:
        return None
    return ", ".join(sorted(by_placeholders[min(by_placeholders)])) or None


class SecurityHeadersMiddleware:
    """Pure ASGI middleware (no body buffering); add it last so that it wraps everything."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = str(scope.get("path", "")).startswith(_CACHEABLE_PREFIXES)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _ALWAYS:
                    headers[name] = value
                if not cacheable:
                    headers["Cache-Control"] = "no-store"
                if message["status"] == 405 and (allowed := _allowed(scope)):
                    headers["Allow"] = allowed
            await send(message)

        await self.app(scope, receive, send_with_headers)

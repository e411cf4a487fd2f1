"""Signing in over HTTP, shared by the REST API and the console (no web framework here).

A request proves who it is with an API token (``Authorization: Bearer cdr_...``) or with a
console session: a short-lived token of kind ``session`` in an HttpOnly, SameSite=Strict
cookie. The cookie is sent by the browser on its own, so every state-changing request made
with it must also carry a CSRF token: the HMAC of the session token (double submit, as a
hidden form field or the ``X-CSRF-Token`` header). A page only sees it because it was served
to the session's holder; another site can neither read the cookie nor compute the HMAC.

The API's middleware stores the :class:`WebIdentity` of each authenticated request in the ASGI
scope under :data:`SCOPE_KEY`; the console reads it from there.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from codara.auth import AuthError, Users
from codara.errors import UserError
from codara.review import Principal

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SAFE_METHODS",
    "SCOPE_KEY",
    "SESSION_COOKIE",
    "SESSION_TTL",
    "CsrfError",
    "WebIdentity",
    "bearer_token",
    "check_csrf",
    "csrf_token",
    "end_session",
    "identify",
    "identity_in",
    "start_session",
]

SESSION_COOKIE = "codara_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL = 12 * 3600.0
SCOPE_KEY = "codara.identity"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# What Users.create_token hands out: "cdr_" and 43 URL-safe characters. Anything else is
# refused before the database is asked.
_TOKEN = re.compile(r"^cdr_[A-Za-z0-9_-]{20,100}$")
_USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")
_CSRF_CONTEXT = b"codara-console-csrf-v1"


class CsrfError(UserError):
    code = "csrf_failed"
    http_status = 403
    exit_code = 14


@dataclass(frozen=True)
class WebIdentity:
    """Who sent a request, and with which credential."""

    principal: Principal
    token: str
    via: Literal["bearer", "session"]

    @property
    def csrf(self) -> str:
        """The CSRF token pages served to this session embed in their forms."""
        return csrf_token(self.token)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def csrf_token(session_token: str) -> str:
    return hmac.new(session_token.encode(), _CSRF_CONTEXT, hashlib.sha256).hexdigest()


def check_csrf(identity: WebIdentity, given: str | None) -> None:
    """Refuse a state-changing request made with the session cookie but without its token."""
    if identity.via != "session":
        return  # a bearer token is never sent by the browser on its own
    if not given or not hmac.compare_digest(given.encode(), identity.csrf.encode()):
        raise CsrfError(
            "this request changes something but carries no valid CSRF token",
            hint="reload the page and submit the form again; API clients use a bearer token",
        )


async def identify(users: Users, *, authorization: str | None, cookie: str | None) -> WebIdentity:
    """Authenticate a request from its ``Authorization`` header, else its session cookie."""
    via: Literal["bearer", "session"]
    if authorization:
        token, via = bearer_token(authorization), "bearer"
        if token is None:
            raise AuthError(
                "the Authorization header must be of the form 'Bearer cdr_...'",
                hint="create a token with `codara tokens create USER`",
            )
    elif cookie:
        token, via = cookie, "session"
    else:
        raise AuthError(
            "sign in first: send 'Authorization: Bearer <token>' or log in at /login",
            hint="create a token with `codara tokens create USER`",
        )
    if not _TOKEN.match(token):
        raise AuthError("unknown or revoked token", hint="create one: codara tokens create")
    return WebIdentity(await users.authenticate(token), token, via)


async def start_session(
    users: Users, username: str, password: str, *, address: str = ""
) -> tuple[Principal, str]:
    """Check a user name and password (throttled per user and per ``address``); return the
    principal and a new session token."""
    if not _USERNAME.match(username) or not password or len(password) > 1000:
        raise AuthError("wrong user name or password")
    principal = await users.login(username, password, address=address)
    token = await users.create_token(
        principal.username, "console session", kind="session", ttl=SESSION_TTL
    )
    return principal, token


async def end_session(users: Users, identity: WebIdentity) -> None:
    if identity.via == "session":
        await users.revoke(identity.token)


def identity_in(scope: Mapping[str, Any]) -> WebIdentity:
    """The identity the API's middleware authenticated for this request."""
    identity = scope.get(SCOPE_KEY)
    if not isinstance(identity, WebIdentity):
        raise AuthError("this request was not authenticated")
    return identity

"""The HTTP way in: a FastAPI application with the REST API (``/api``, OpenAPI at
``/openapi.json``) and the reviewer/operator console, served by ``codara serve``.

``create_app(app)`` builds it for a :class:`codara.App`; every route except ``/login``,
``/healthz`` and the static files needs an API token (``Authorization: Bearer cdr_...``) or a
console session.
"""

from __future__ import annotations

from codara.api._app import create_app

__all__ = ["create_app"]

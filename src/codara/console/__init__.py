"""The reviewer and operator console: server-rendered pages (Jinja2 + htmx, no build step,
no external network) on the same FastAPI application as the REST API.

``install(api)`` adds the pages and the static files; the API's middleware has authenticated
the caller already (the console only reads the identity it left in the request's scope).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from codara.console._pages import error_page, router

__all__ = ["STATIC_DIR", "error_page", "install"]

STATIC_DIR = Path(__file__).parent / "static"


def install(api: FastAPI) -> None:
    """Add the console's pages and its static files (``/static``) to ``api``."""
    api.include_router(router)
    api.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

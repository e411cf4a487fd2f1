"""Security headers on every response: a strict CSP that forbids framing, no MIME sniffing,
no referrer, and ``Cache-Control: no-store`` wherever case data can be in the body."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Env  # tests/api/conftest.py

CSP = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "frame-ancestors": "'none'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
}


def _directives(header: str) -> dict[str, str]:
    parts = (p.strip().split(None, 1) for p in header.split(";") if p.strip())
    return {p[0]: (p[1] if len(p) > 1 else "") for p in parts}


@pytest.mark.parametrize(
    ("user", "method", "path"),
    [
        ("root", "GET", "/api/runs"),
        ("alice", "GET", "/api/reviews"),
        ("alice", "GET", "/api/reviews/nope"),  # 404
        (None, "GET", "/api/me"),  # 401
        ("alice", "PUT", "/api/me"),  # 405
        (None, "GET", "/login"),
        (None, "GET", "/queue"),  # redirect to the login form
        ("root", "GET", "/openapi.json"),
        (None, "GET", "/healthz"),
        (None, "GET", "/static/codara.js"),
    ],
)
async def test_every_response_carries_the_security_headers(
    sqlite_env: Env, user: str | None, method: str, path: str
) -> None:
    async with sqlite_env.client(user) as client:
        response = await client.request(method, path)
    h = response.headers
    assert "content-security-policy" in h, f"{method} {path}: no CSP"
    directives = _directives(h["content-security-policy"])
    for name, value in CSP.items():
        assert directives.get(name) == value, f"{method} {path}: {name} is {directives.get(name)}"
    for values in directives.values():
        assert "'unsafe-inline'" not in values
        assert "'unsafe-eval'" not in values
    assert h.get("x-frame-options") == "DENY"
    assert h.get("x-content-type-options") == "nosniff"
    assert h.get("referrer-policy") == "same-origin"
    if not path.startswith("/static/"):
        assert h.get("cache-control") == "no-store", f"{method} {path} may be cached"


async def test_console_pages_with_case_data_are_not_cached(sqlite_env: Env) -> None:
    run_id = await sqlite_env.start(40.0)
    review_id = await sqlite_env.review_of(run_id)
    async with sqlite_env.client() as client:
        login = await client.post(
            "/login", data={"username": "alice", "password": sqlite_env.password, "next": "/queue"}
        )
        assert login.status_code == 303
        assert login.headers.get("cache-control") == "no-store"
        for path in ("/queue", f"/reviews/{review_id}"):
            page = await client.get(path)
            assert page.status_code == 200, path
            assert "refund as asked" in page.text
            assert page.headers.get("cache-control") == "no-store", path
            assert page.headers.get("x-frame-options") == "DENY", path


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/api/runs", "GET, POST"),  # two routes on one path: both methods
        ("DELETE", "/api/me", "GET"),
        ("GET", "/api/reviews/r1/approve", "POST"),
    ],
)
async def test_a_405_names_every_allowed_method(
    sqlite_env: Env, method: str, path: str, allow: str
) -> None:
    async with sqlite_env.client("root") as client:
        response = await client.request(method, path)
    assert response.status_code == 405
    assert response.headers.get("allow") == allow
    assert response.json()["error"]["code"] == "not_allowed"


async def test_a_405_on_a_literal_path_names_its_own_methods(sqlite_env: Env) -> None:
    """/api/reviews/bulk-approve also fits /api/reviews/{review_id}; its own route decides."""
    async with sqlite_env.client("root") as client:
        response = await client.request("OPTIONS", "/api/reviews/bulk-approve")
    assert response.status_code == 405
    assert response.headers.get("allow") == "POST"

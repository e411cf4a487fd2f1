"""Hostile input on every POST route: lone surrogates, non-finite numbers, deep nesting, invalid
UTF-8, wrong content types and huge bodies get a 4xx (never a 5xx) and write nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from conftest import Env  # tests/api/conftest.py


LIMIT = 1024 * 1024  # the default [server] max_body_bytes
FORM = "application/x-www-form-urlencoded"


async def row_counts(env: Env) -> dict[str, int]:
    """Rows in every codara table."""
    if env.app.settings.store.url.startswith("sqlite"):
        sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'codara%'"
    else:
        sql = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    tables = [str(r[0]) for r in await env.app.store.execute_raw(sql)]
    counts = {}
    for t in tables:
        rows = await env.app.store.execute_raw(f'SELECT COUNT(*) FROM "{t}"')
        counts[t] = int(rows[0][0])
    return counts


def raw(body: str | bytes, content_type: str = "application/json") -> dict[str, Any]:
    data = body.encode() if isinstance(body, str) else body
    return {"content": data, "headers": {"content-type": content_type}}


# -- finding 1: lone surrogates and non-finite numbers ----------------------------------------
async def test_edit_with_a_lone_surrogate_is_422_and_writes_nothing(env: Env) -> None:
    run_id = await env.start(900.0)  # "big": carol (finance) decides
    review_id = await env.review_of(run_id)
    before = await row_counts(env)
    async with env.client("carol") as c:
        for body in (
            '{"proposal": {"amount": 1.0, "note": "x\\ud800"}, "comment": "ok"}',
            '{"proposal": {"amount": 1.0, "note": "fine"}, "comment": "x\\udfff"}',
            '{"proposal": {"amount": 1.0, "note\\ud800": "fine"}}',
        ):
            r = await c.post(f"/api/reviews/{review_id}/edit", **raw(body))
            assert r.status_code == 422, r.text
            assert r.json()["error"]["code"] == "input_error"
            assert "surrogate" in r.json()["error"]["message"]
        note = '{"proposal": {"amount": 1.0, "note": "x\\ud800"}}'
        r = await c.post(f"/api/reviews/{review_id}/edit", **raw(note))
        assert "proposal.note" in r.json()["error"]["message"]
        assert await row_counts(env) == before
        # the item is still readable and decidable
        assert (await c.get(f"/api/reviews/{review_id}")).status_code == 200
        r = await c.post(
            f"/api/reviews/{review_id}/edit",
            json={"proposal": {"amount": 1.0, "note": "fine"}, "comment": "ok"},
        )
        assert r.status_code == 200, r.text
    await env.app.work(until_idle=True)
    assert (await env.app.get_run(run_id)).status == "completed"


async def test_non_finite_numbers_are_422_naming_the_field(env: Env) -> None:
    run_id = await env.start(900.0)
    review_id = await env.review_of(run_id)
    before = await row_counts(env)
    async with env.client("carol") as c:
        for number in ("NaN", "Infinity", "-Infinity", "1e999"):
            r = await c.post(f"/api/reviews/{review_id}/claim", **raw(f'{{"ttl": {number}}}'))
            assert r.status_code == 422, r.text
            assert "ttl" in r.json()["error"]["message"]
            r = await c.post(
                f"/api/reviews/{review_id}/edit",
                **raw(f'{{"proposal": {{"amount": {number}, "note": "n"}}}}'),
            )
            assert r.status_code == 422, r.text
            assert "proposal.amount" in r.json()["error"]["message"]
    assert await row_counts(env) == before


async def test_validation_errors_never_echo_unencodable_input(sqlite_env: Env) -> None:
    """A 422 of the schema (wrong type) on a value JSON cannot carry: answered, not a 500."""
    async with sqlite_env.client("olga") as c:
        r = await c.post("/api/runs", **raw(b'{"workflow": "\xff\xfe"}'))
        assert r.status_code == 422, r.text
        r = await c.post("/api/runs", **raw(b"\xff\xfe\x00garbage", "text/plain"))
        assert r.status_code == 422, r.text
        json.dumps(r.json(), allow_nan=False)


# -- finding 2: body size limits ---------------------------------------------------------------
async def test_a_body_over_the_limit_is_413_by_content_length(sqlite_env: Env) -> None:
    before = await row_counts(sqlite_env)
    body = json.dumps({"workflow": "refunds", "input": {"x": "a" * (LIMIT + 10)}})
    async with sqlite_env.client("olga") as c:
        r = await c.post("/api/runs", **raw(body))
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"
    assert await row_counts(sqlite_env) == before


async def test_a_chunked_body_over_the_limit_is_413_without_reading_it_all(
    sqlite_env: Env,
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"workflow": "refunds", "input": "'
        for _ in range(50 * 16):  # up to 50 MiB
            sent += 1
            yield b"a" * 65536
        yield b'"}'

    async with sqlite_env.client("olga") as c:
        r = await c.post(
            "/api/runs", content=chunks(), headers={"content-type": "application/json"}
        )
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"
    assert sent < 50 * 16  # refused before the end of the stream


async def test_the_body_limit_is_configurable(
    seeded_sqlite: Any, app_factory: Callable[..., Any]
) -> None:
    from codara.api import create_app

    app = app_factory(seeded_sqlite.url)
    api = create_app(app, max_body_bytes=100)
    async with api.router.lifespan_context(api):
        headers = {"Authorization": f"Bearer {seeded_sqlite.tokens['olga']}"}
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=headers
        ) as c:
            r = await c.post("/api/runs", json={"workflow": "refunds", "input": "a" * 200})
            assert r.status_code == 413
            r = await c.post("/api/runs", json={"workflow": "nope"})
            assert r.status_code == 404


async def test_a_big_signal_payload_is_413(env: Env) -> None:
    run_id = await env.start(900.0)
    before = await row_counts(env)
    async with env.client("olga") as c:
        r = await c.post(
            f"/api/runs/{run_id}/signals/poke", json={"payload": "a" * (64 * 1024 + 1)}
        )
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "payload_too_large"
        assert await row_counts(env) == before
        r = await c.post(f"/api/runs/{run_id}/signals/poke", json={"payload": "a" * 1000})
        assert r.status_code == 200, r.text


# -- finding 3: every POST route against hostile bodies ----------------------------------------
HOSTILE: list[tuple[str, dict[str, Any]]] = [
    ("lone surrogate", raw('{"comment": "x\\ud800", "proposal": "\\udc00", "ids": ["\\ud800"]}')),
    ("surrogate key", raw('{"\\ud800": 1}')),
    ("NaN", raw('{"ttl": NaN, "version": NaN, "proposal": NaN, "payload": NaN}')),
    ("Infinity", raw('{"ttl": Infinity, "version": -Infinity, "payload": Infinity}')),
    ("1e999", raw('{"ttl": 1e999, "version": 1e999, "proposal": 1e999, "payload": 1e999}')),
    ("deep lists", raw("[" * 10_000 + "]" * 10_000)),
    ("deep objects", raw('{"a":' * 10_000 + "1" + "}" * 10_000)),
    ("deep payload", raw('{"payload": ' + "[" * 5_000 + "]" * 5_000 + "}")),
    ("invalid utf-8", raw(b'{"comment": "\xff\xfe\xc3", "to": "\xed\xa0\x80"}')),
    ("invalid utf-8 text", raw(b"\xff\xfe\xc3\x28", "text/plain")),
    ("invalid utf-8 form", raw(b"username=\xff\xfe&password=\xed\xa0\x80", FORM)),
    ("surrogate form", raw("comment=%ED%A0%80&reason_code=%FF", FORM)),
    ("xml", raw("<a>1</a>", "application/xml")),
    ("multipart", raw("--x\r\n\r\n--x--", "multipart/form-data; boundary=x")),
    ("bad multipart", raw("garbage", "multipart/form-data")),
    ("not json", raw("{not json")),
    ("huge", raw('{"comment": "' + "a" * (LIMIT + 1) + '"}')),
]


async def test_every_post_route_survives_hostile_bodies(env: Env) -> None:
    run_id = await env.start(900.0)
    review_id = await env.review_of(run_id)
    paths = [
        "/api/runs", f"/api/runs/{run_id}/signals/poke",
        "/api/reviews/bulk-approve", f"/api/reviews/{review_id}/claim",
        f"/api/reviews/{review_id}/delegate", f"/api/reviews/{review_id}/approve",
        f"/api/reviews/{review_id}/edit", f"/api/reviews/{review_id}/reject",
        "/login", "/queue/bulk-approve", f"/reviews/{review_id}/edit",
        f"/reviews/{review_id}/reject",
    ]  # fmt: skip
    # routes whose body is all optional (cancel, unclaim, logout, the console's approve and
    # claim) act on a body they do not read: they are not here.
    before = await row_counts(env)
    failures = []
    for user in ("root", None):
        async with env.client(user) as c:
            for path in paths:
                for name, request in HOSTILE:
                    r = await c.post(path, **request)
                    if r.status_code >= 500 or r.status_code < 400:
                        failures.append((user, path, name, r.status_code, r.text[:200]))
    assert failures == []
    assert await row_counts(env) == before
